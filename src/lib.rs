//! wxchat: a single-binary chat server for WeChat mini-programs, official accounts and web/app
//! clients.
//!
//! Layering, top first; each layer imports only from itself and the layers below it, and
//! `scripts/check-layers` (run by the test command) fails on an import cycle or an upward import:
//!
//! - `server` (composition root: config -> state owner -> bus -> router -> reactor), `handover`;
//! - `app` (the router, `Front`: routes, endpoints, the HTTP API, the server API, the WeChat
//!   callback endpoint);
//! - `login` (doLogin, WeChat mini-program login, QR-code login, demo, token issuing);
//! - `chat` (the hub's handlers) and `admin` (the admin listener and its clients);
//! - `rt` (the state owner `App`, `Completion`, jobs, timers, persister, shared replies);
//! - the pure cores the state owner holds: `chat::state`, `chat::desk`, `chat::consult_clock`,
//!   `chat::membership`, `login::qr_state`, `rt::timer`;
//! - `feed` (info topics and emit), `cluster` (the bus);
//! - `wechat` (the WeChat client), `net` (the backend seam and the mio reactor), `jobs`, `upload`,
//!   `web`, `backends`, `secrets`, `logger`, `sd_notify`;
//! - `config`, `proto`, `profile`; `store`, `auth`; the codecs `http` and `ws` (pure, fuzzed).

pub mod admin;
pub mod app;
pub mod auth;
pub mod backends;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod feed;
pub mod foreground;
pub mod handover;
pub mod http;
pub mod jobs;
pub mod logger;
pub mod login;
pub mod net;
pub mod pidfile;
pub mod profile;
pub mod proto;
pub mod rt;
pub mod sd_notify;
pub mod secrets;
pub mod server;
pub mod store;
pub mod upload;
pub mod web;
pub mod wechat;
pub mod ws;
