//! The WeChat client, and nothing of chat: the API (worker threads only), the shared
//! access_token cache, message crypto (safe mode), the push format (XML/JSON parsing, passive
//! replies) and `wx.getUserProfile`-style payload decryption.
//!
//! Layer: below the state owner (`rt`); imports only `config`, `store::cache`, `feed` (to report
//! API calls) and the codecs. Logins that use it live in `login/`, customer service in
//! `chat/wechat_cs.rs`, the callback endpoint in `app/wechat_callback.rs`.

pub mod access_token;
pub mod api;
pub mod crypto;
pub mod decrypt;
pub mod message;
pub mod push;
