//! wxchat: a single-binary chat server for WeChat mini-programs, official accounts and web/app
//! clients.
//!
//! Layering, as it stands: `ws` and `http` are pure codecs with no knowledge of chat; `net` is
//! the backend seam and the mio reactor that speaks those codecs; `app` is the handler the
//! reactor drives (it still defines the state owner, `App`, which the features import: the
//! architecture issue moves it below them); `server` wires config, application and reactor for
//! the `server` binary (`src/bin/server.rs`) and for in-process tests.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backends;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod feed;
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
