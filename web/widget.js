// wxchat visitor widget loader. A website adds
//
//   <script src="https://chat.example.com/widget.js" async></script>
//
// and gets a floating customer-service button. This script runs in the host page (another
// origin), so it only injects the button and an iframe of <origin of this script>/widget/,
// which does the chat same-origin with the server. The host talks to the frame with
//
//   WxChatWidget.open() / .close() / .toggle()
//   WxChatWidget.login(token)   // the visitor logged in on the host site: their chat history
//                               // moves to that user (POST /api/service/visitor/convert)
//   WxChatWidget.logout()
//
// or by posting {type: 'wxchat:login', token} to the frame itself. Options are data attributes
// of the script tag: data-open="true" (open at once), data-position="left", data-label="…".
(function () {
  'use strict';
  if (window.WxChatWidget) return; // included twice
  var script = document.currentScript;
  if (!script || !script.src) return;
  var origin = new URL(script.src, location.href).origin;
  var opts = script.dataset || {};
  var side = opts.position === 'left' ? 'left' : 'right';
  var label = opts.label || 'Chat with us';

  var isOpen = false;
  var ready = false;
  var queued = []; // messages for the frame posted before it said it is ready

  var button = document.createElement('button');
  button.type = 'button';
  button.setAttribute('aria-label', label);
  button.setAttribute('aria-expanded', 'false');
  button.setAttribute('data-wxchat', 'button');
  // A speech bubble drawn in SVG: no emoji font needed on the visitor's machine.
  var svgNs = 'http://www.w3.org/2000/svg';
  var icon = document.createElementNS(svgNs, 'svg');
  icon.setAttribute('viewBox', '0 0 24 24');
  icon.setAttribute('width', '28');
  icon.setAttribute('height', '28');
  icon.setAttribute('aria-hidden', 'true');
  var path = document.createElementNS(svgNs, 'path');
  path.setAttribute('d', 'M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z');
  path.setAttribute('fill', 'currentColor');
  icon.appendChild(path);
  button.appendChild(icon);
  var badge = document.createElement('span');
  badge.setAttribute('data-wxchat', 'badge');
  badge.hidden = true;
  button.appendChild(badge);
  // Styles set through the CSSOM: allowed under a host page's strict style-src.
  Object.assign(button.style, {
    position: 'fixed', bottom: '20px', width: '56px', height: '56px', borderRadius: '50%',
    border: '0', background: '#07c160', color: '#fff', fontSize: '26px', cursor: 'pointer',
    boxShadow: '0 4px 14px rgba(0,0,0,.25)', zIndex: '2147483646', padding: '0',
    display: 'flex', alignItems: 'center', justifyContent: 'center',
  });
  button.style[side] = '20px';
  Object.assign(badge.style, {
    position: 'absolute', top: '-4px', right: '-4px', minWidth: '20px', height: '20px',
    borderRadius: '10px', background: '#d93025', color: '#fff', fontSize: '12px',
    lineHeight: '20px', padding: '0 5px', fontFamily: 'system-ui, sans-serif',
  });

  var frame = document.createElement('iframe');
  frame.src = origin + '/widget/';
  frame.title = 'Customer service chat';
  frame.setAttribute('data-wxchat', 'frame');
  Object.assign(frame.style, {
    position: 'fixed', bottom: '88px', width: '370px', height: '560px',
    maxWidth: 'calc(100vw - 24px)', maxHeight: 'calc(100vh - 108px)', border: '0',
    borderRadius: '12px', boxShadow: '0 8px 30px rgba(0,0,0,.25)', zIndex: '2147483647',
    background: '#fff', display: 'none',
  });
  frame.style[side] = '12px';

  function fit() {
    // Phones: the open box takes the whole screen.
    var small = window.innerWidth < 500;
    frame.style.bottom = small ? '0' : '88px';
    frame.style.width = small ? '100vw' : '370px';
    frame.style.height = small ? '100%' : '560px';
    frame.style.maxWidth = small ? '100vw' : 'calc(100vw - 24px)';
    frame.style.maxHeight = small ? '100%' : 'calc(100vh - 108px)';
    frame.style.borderRadius = small ? '0' : '12px';
    frame.style[side] = small ? '0' : '12px';
  }

  // Browsers that block storage in third-party frames leave the frame nothing to remember a
  // returning visitor by: it then hands their anonymous identity to us, kept in this site's
  // storage (the token is a visitor's, worth nothing beyond that visitor's own conversation).
  var KEY = 'wxchat-visitor:' + origin;
  function loadVisitor() {
    try {
      return JSON.parse(localStorage.getItem(KEY) || 'null');
    } catch (e) {
      return null;
    }
  }
  function saveVisitor(v) {
    try {
      if (v) localStorage.setItem(KEY, JSON.stringify(v));
      else localStorage.removeItem(KEY);
    } catch (e) {
      // No storage here either: the visitor starts afresh next time.
    }
  }

  function post(msg) {
    if (!ready) {
      queued.push(msg);
      return;
    }
    frame.contentWindow.postMessage(msg, origin);
  }

  function setOpen(open) {
    isOpen = open;
    fit();
    frame.style.display = open ? 'block' : 'none';
    button.setAttribute('aria-expanded', String(open));
    button.style.display = open && window.innerWidth < 500 ? 'none' : 'flex';
    post({ type: open ? 'wxchat:open' : 'wxchat:hidden' });
  }

  button.addEventListener('click', function () { setOpen(!isOpen); });
  window.addEventListener('resize', function () { if (isOpen) fit(); });

  window.addEventListener('message', function (e) {
    if (e.origin !== origin || e.source !== frame.contentWindow) return;
    var d = e.data || {};
    if (d.type === 'wxchat:ready') {
      ready = true;
      // Sent first, before anything queued: the frame decides who the visitor is from it.
      frame.contentWindow.postMessage({ type: 'wxchat:init', visitor: loadVisitor() }, origin);
      var pending = queued;
      queued = [];
      pending.forEach(post);
      if (isOpen) post({ type: 'wxchat:open' });
    } else if (d.type === 'wxchat:visitor') {
      saveVisitor(d.visitor);
    } else if (d.type === 'wxchat:minimize') {
      setOpen(false);
      button.focus();
    } else if (d.type === 'wxchat:unread') {
      var n = Number(d.count) || 0;
      badge.hidden = n === 0;
      badge.textContent = n > 99 ? '99+' : String(n);
    }
    // Hosts may listen too: every event of the frame is re-dispatched on window.
    window.dispatchEvent(new CustomEvent('wxchat', { detail: d }));
  });

  function mount() {
    document.body.appendChild(frame);
    document.body.appendChild(button);
    if (opts.open === 'true') setOpen(true);
  }
  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);

  window.WxChatWidget = {
    open: function () { setOpen(true); },
    close: function () { setOpen(false); },
    toggle: function () { setOpen(!isOpen); },
    login: function (token) { post({ type: 'wxchat:login', token: String(token) }); },
    logout: function () { post({ type: 'wxchat:logout' }); },
    frame: frame,
  };
})();
