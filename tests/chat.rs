//! The chat protocol over real sockets on the embedded store: logins, the server API, sending
//! with acks and deliveries, offline sync, history, conversations, read receipts, friends, groups
//! and the error codes. The cases are in `support/chat_cases.rs`; `chat_production.rs` runs the
//! same cases on MySQL + Redis.

mod common;
use common::*;

/// The embedded default: SQLite in the server's data directory, everything else in-process.
fn backend() -> (String, Box<dyn std::any::Any>) {
    (String::new(), Box::new(()))
}

include!("support/chat_cases.rs");
include!("support/online_chat_cases.rs");
