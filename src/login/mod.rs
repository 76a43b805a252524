//! Logging in, every way: online_chat's signed doLogin (with its failure limiter and replay
//! guard), WeChat mini-program login (`jscode2session`), official-account QR-code scan login,
//! and the demo page's login. Each ends the same way: a user and a token ([`tokens`]).
//!
//! Layer: above `chat` (a login may convert a visitor and push a changed profile) and below the
//! router (`app`), which routes requests here. `qr_state` is QR login's pure core, held by the
//! state owner, so it imports nothing above `rt::timer`.

pub mod demo;
pub mod dologin;
pub mod qr;
pub mod qr_state;
pub mod tokens;
pub mod wechat;
