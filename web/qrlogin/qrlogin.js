// Official-account QR-code login (protocol-spec 4.2): /ws/qrlogin pushes WeChat's showqrcode
// URL; the user scans and follows; the server pushes scan_success with a token, kept for this
// tab so the chat demo opens logged in. ?app=NAME picks the official account when several are
// configured.

import { QrLogin } from '/sdk/index.js';
import { chatUrl, setStatus } from '/common/ui.js';

const $ = (id) => document.getElementById(id);
// The chat demo reads its token from here (per tab).
const DEMO_TOKEN_KEY = 'wxchat-demo-token';
let countdown = null;

function run() {
  const app = new URLSearchParams(location.search).get('app') || undefined;
  const qr = new QrLogin({ url: chatUrl('/ws/qrlogin'), app });
  $('again').hidden = true;
  $('qr').hidden = true;
  $('qr-fallback').hidden = true;
  $('qr-wait').hidden = false;
  setStatus($('status'), '');

  qr.on('qrcode_url', (m) => {
    const img = $('qr');
    // WeChat's showqrcode URL is the QR image itself. When WeChat cannot be reached the image
    // fails: say so and offer the link, the wait for the scan goes on regardless.
    img.onerror = () => {
      img.hidden = true;
      $('qr-fallback').hidden = false;
    };
    img.onload = () => {
      img.hidden = false;
      $('qr-fallback').hidden = true;
    };
    img.src = m.url;
    $('qr-link').href = m.url;
    $('qr-wait').hidden = true;
    const until = Date.now() + (m.expire_seconds || 120) * 1000;
    clearInterval(countdown);
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      $('expires').textContent = `The code expires in ${left} s.`;
    };
    tick();
    // A display countdown only: the server says when the code expired.
    countdown = setInterval(tick, 1000);
  });

  qr.start().then((ok) => {
    clearInterval(countdown);
    sessionStorage.setItem(DEMO_TOKEN_KEY, ok.token);
    const u = ok.user || {};
    $('waiting').hidden = true;
    $('expires').textContent = '';
    $('done').hidden = false;
    $('user').textContent = `${u.name || '微信用户'} (uid ${u.uid})${ok.is_new ? ' · new account' : ''}`;
    setStatus($('status'), 'Logged in with WeChat.', 'ok');
  }).catch((err) => {
    clearInterval(countdown);
    $('expires').textContent = '';
    $('again').hidden = false;
    setStatus($('status'), err.code === 'expired' ? 'The code expired.' : `QR login failed: ${err.message}`, 'error');
  });
}

$('again').addEventListener('click', run);
run();
