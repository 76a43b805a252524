// The behaviour of a page showing one conversation (chat and customer service): history pages
// on scroll up, the SDK's message events, read cursor, text and image sending.

const { merge } = require('./messages');

const PAGE = 30;

module.exports = Behavior({
  data: { msgs: [], text: '', lastId: '', hasMore: false, loading: false },

  methods: {
    /**
     * Starts showing `convId`; `target` is what send() needs ({chat_type, to_id}). Call from
     * onLoad; stopThread() from onUnload.
     */
    startThread(convId, target) {
      this.chat = getApp().chat();
      this.convId = convId;
      this.target = target;
      this.offMessage = this.chat.on('message', (m) => {
        if (m.conv_id !== this.convId) return;
        this.show([m]);
        if (m.from_id !== this.chat.uid) this.chat.read(m.conv_id, m.seq).catch(() => {});
      });
      this.loadOlder(true);
    },

    stopThread() {
      if (this.offMessage) this.offMessage();
    },

    show(msgs, toEnd = true) {
      const list = merge(this.data.msgs, msgs, this.chat.uid);
      const patch = { msgs: list };
      if (toEnd && list.length) patch.lastId = list[list.length - 1].id;
      this.setData(patch);
    },

    /** The newest page (first) or the page before the oldest shown (scroll-view's upper edge). */
    async loadOlder(first) {
      if (this.data.loading || (first !== true && !this.data.hasMore)) return;
      this.setData({ loading: true });
      try {
        await this.chat.connect();
        const oldest = this.data.msgs.length ? this.data.msgs[0].seq : 0;
        const keep = this.data.msgs.length ? this.data.msgs[0].id : '';
        const page = await this.chat.history(this.convId, first === true ? 0 : oldest, PAGE);
        this.show(page.messages, first === true);
        if (first !== true && keep) this.setData({ lastId: keep });
        this.setData({ hasMore: page.has_more });
        const newest = this.data.msgs.length ? this.data.msgs[this.data.msgs.length - 1].seq : 0;
        if (first === true && newest) this.chat.read(this.convId, newest).catch(() => {});
      } catch (err) {
        wx.showToast({ title: '加载失败', icon: 'none' });
      } finally {
        this.setData({ loading: false });
      }
    },

    onInput(e) {
      this.setData({ text: e.detail.value });
      const now = Date.now();
      // One typing push per three seconds (the other side shows "typing…").
      if (!this.lastTyping || now - this.lastTyping > 3000) {
        this.lastTyping = now;
        this.chat.typing(this.convId).catch(() => {});
      }
    },

    async sendText() {
      const text = this.data.text.trim();
      if (!text) return;
      this.setData({ text: '' });
      try {
        // The SDK keeps it in its outbox until the server acknowledges it, across reconnects
        // and restarts; the message event shows it.
        await this.chat.send({ ...this.target, msg_type: 0, msg: text });
      } catch (err) {
        wx.showToast({ title: `发送失败：${err.message}`, icon: 'none' });
      }
    },

    /** wx.chooseMedia, /api/upload through the SDK (wx.uploadFile), an image message. */
    async sendImage() {
      let file;
      try {
        const r = await new Promise((resolve, reject) => wx.chooseMedia({ count: 1, mediaType: ['image'], sizeType: ['compressed'], success: resolve, fail: reject }));
        file = r.tempFiles[0];
      } catch {
        return; // cancelled
      }
      wx.showLoading({ title: '上传中' });
      try {
        const up = await this.chat.upload(file.tempFilePath);
        const info = await new Promise((resolve) => wx.getImageInfo({ src: file.tempFilePath, success: resolve, fail: () => resolve({}) }));
        await this.chat.send({
          ...this.target,
          msg_type: 1,
          msg: { url: up.url, size: up.size, mime: up.mime, width: info.width, height: info.height },
        });
      } catch (err) {
        wx.showToast({ title: `发送失败：${err.message}`, icon: 'none' });
      } finally {
        wx.hideLoading();
      }
    },

    preview(e) {
      const url = e.currentTarget.dataset.url;
      const urls = this.data.msgs.filter((m) => m.kind === 'image').map((m) => m.url);
      wx.previewImage({ current: url, urls });
    },

    openFile(e) {
      // Files open through a download to a temp path and wx.openDocument (pdf and office files).
      wx.downloadFile({
        url: e.currentTarget.dataset.url,
        success: (r) => wx.openDocument({ filePath: r.tempFilePath, showMenu: true }),
        fail: () => wx.showToast({ title: '下载失败', icon: 'none' }),
      });
    },
  },
});
