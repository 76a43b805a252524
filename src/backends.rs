//! Opens the configured backends: the durable store (SQLite or MySQL) and the token, presence and
//! cache services (Redis, or in-process). Any failure here stops the start with a message that
//! names the service and the (password-redacted) address; there is no silent fallback.

use crate::config::Config;
use crate::store::cache::MemoryCache;
use crate::store::mysql::{redact_url, MysqlStore};
use crate::store::presence::MemoryPresence;
use crate::store::redis::RedisKv;
use crate::store::sqlite::SqliteStore;
use crate::store::tokens::DbTokens;
use crate::store::{Backends, Store};
use std::sync::Arc;
use std::time::Duration;

pub fn open(config: &Config) -> Result<Backends, String> {
    // Redis first: a bad or unreachable Redis stops the start before any file is created.
    let redis = if config.redis.url.is_empty() {
        None
    } else {
        Some(Arc::new(
            RedisKv::open(
                &config.redis.url,
                &config.redis.prefix,
                Duration::from_millis(config.redis.timeout_ms),
                Duration::from_secs(config.redis.presence_ttl_s),
                config.redis.pool,
            )
            .map_err(|e| format!("cannot use Redis at {}: {e}", redact_url(&config.redis.url)))?,
        ))
    };
    let store: Arc<dyn Store> = match config.store.backend.as_str() {
        "mysql" => Arc::new(
            MysqlStore::open(
                &config.store.mysql_url,
                config.store.mysql_pool,
                Duration::from_secs(config.store.mysql_timeout_s),
            )
            .map_err(|e| {
                format!(
                    "cannot use MySQL at {}: {e}",
                    redact_url(&config.store.mysql_url)
                )
            })?,
        ),
        _ => Arc::new(
            SqliteStore::open(
                &config.sqlite_file(),
                config.store.sqlite_synchronous == "full",
            )
            .map_err(|e| format!("cannot open {}: {e}", config.sqlite_file().display()))?,
        ),
    };
    let Some(redis) = redis else {
        return Ok(Backends {
            tokens: Arc::new(DbTokens(store.clone())),
            presence: Arc::new(MemoryPresence::new(Duration::from_secs(
                config.redis.presence_ttl_s.max(3),
            ))),
            cache: Arc::new(MemoryCache::new()),
            store,
        });
    };
    log::info!(
        "store: {} with Redis at {} (prefix {:?})",
        config.store.backend,
        redact_url(&config.redis.url),
        config.redis.prefix
    );
    Ok(Backends {
        store,
        tokens: redis.clone(),
        presence: redis.clone(),
        cache: redis,
    })
}

/// `[server] node_id`, or `<hostname>-<pid>-<random>`.
pub fn node_id(config: &Config) -> String {
    if !config.server.node_id.is_empty() {
        return config.server.node_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut r = [0u8; 4];
    let _ = getrandom::getrandom(&mut r);
    format!(
        "{}-{}-{:08x}",
        if host.is_empty() { "wxchat" } else { &host },
        std::process::id(),
        u32::from_le_bytes(r)
    )
}
