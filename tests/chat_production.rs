//! The chat protocol cases of `tests/chat.rs`, on MySQL (a fresh database per test) and Redis
//! (a fresh key prefix per test): the production backends must behave exactly like the embedded
//! store.

mod common;
use common::services::{TestDb, TestRedis};
use common::*;

fn backend() -> (String, Box<dyn std::any::Any>) {
    let db = TestDb::create();
    let redis = TestRedis::create();
    let toml = merge_toml(&db.store_toml(), &redis.toml());
    (toml, Box::new((db, redis)))
}

include!("support/chat_cases.rs");
include!("support/online_chat_cases.rs");
