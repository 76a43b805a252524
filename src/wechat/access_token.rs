//! The access_token service: one token per app, shared by every wxchat process.
//!
//! - Fetched with `cgi-bin/stable_token` (or `cgi-bin/token` when the app sets
//!   `token_endpoint = "token"`): stable tokens are not invalidated by another fetch, so several
//!   processes, or an operator's script, never break each other's tokens.
//! - Cached in the shared cache (Redis when configured) until five minutes before WeChat's expiry.
//! - Refreshed by exactly one caller at a time: the refresher holds a lock in the shared cache
//!   (Redis `SET NX PX` across processes); the others wait for the cached value.
//! - A call answered 40001 / 40014 / 42001 (token invalid or expired) drops that token (only if
//!   it is still the cached one), fetches a fresh one and retries once.
//!
//! Blocking: workers only.

use super::api::{Client, WxError};
use crate::config::WechatApp;
use crate::store::cache::SharedCache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Refresh this long before WeChat's expiry.
const MARGIN: Duration = Duration::from_secs(300);
/// The refresh lock outlives a stuck refresher by at most this.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// Waiting callers poll the cache this often.
const POLL: Duration = Duration::from_millis(20);

pub struct AccessTokens {
    client: Arc<Client>,
    cache: Arc<dyn SharedCache>,
    /// How long a caller waits for another's refresh before giving up.
    wait: Duration,
}

fn cache_key(app: &WechatApp) -> String {
    format!("access_token:{}", app.appid)
}

fn cache_error(e: crate::store::StoreError) -> WxError {
    WxError::Cache(e.to_string())
}

/// Token errors after which a fresh token and one retry may succeed.
pub fn is_token_error(e: &WxError) -> bool {
    matches!(e, WxError::Api { errcode, .. } if matches!(errcode, 40001 | 40014 | 42001))
}

impl AccessTokens {
    pub fn new(client: Arc<Client>, cache: Arc<dyn SharedCache>, wait: Duration) -> AccessTokens {
        AccessTokens {
            client,
            cache,
            wait,
        }
    }

    /// The app's current token: cached, or fetched by exactly one caller.
    pub fn get(&self, app: &WechatApp) -> Result<String, WxError> {
        let key = cache_key(app);
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(t) = self.cache.get(&key).map_err(cache_error)? {
                return Ok(t);
            }
            if let Some(owner) = self.cache.try_lock(&key, LOCK_TTL).map_err(cache_error)? {
                let result = self.refresh_locked(app, &key);
                if let Err(e) = self.cache.unlock(&key, &owner) {
                    log::warn!("access_token lock of {}: {e}", app.name);
                }
                return result;
            }
            if Instant::now() >= deadline {
                return Err(WxError::Unreachable(
                    "timed out waiting for another access_token refresh".into(),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn refresh_locked(&self, app: &WechatApp, key: &str) -> Result<String, WxError> {
        // Someone may have refreshed between our cache miss and our lock.
        if let Some(t) = self.cache.get(key).map_err(cache_error)? {
            return Ok(t);
        }
        let fresh = self.client.access_token(app)?;
        let ttl = Duration::from_secs(fresh.expires_in)
            .saturating_sub(MARGIN)
            .max(Duration::from_secs(60));
        self.cache
            .set(key, &fresh.access_token, ttl)
            .map_err(cache_error)?;
        log::info!(
            "access_token of {} refreshed (valid {} s)",
            app.name,
            fresh.expires_in
        );
        Ok(fresh.access_token)
    }

    /// Drops `token` from the cache if it is still the cached one (a newer token stays).
    pub fn invalidate(&self, app: &WechatApp, token: &str) -> Result<(), WxError> {
        let key = cache_key(app);
        if self.cache.get(&key).map_err(cache_error)?.as_deref() == Some(token) {
            self.cache.delete(&key).map_err(cache_error)?;
        }
        Ok(())
    }

    /// Runs a WeChat call with the app's token; on a token error, refreshes once and retries.
    pub fn call<T>(
        &self,
        app: &WechatApp,
        f: impl Fn(&str) -> Result<T, WxError>,
    ) -> Result<T, WxError> {
        let token = self.get(app)?;
        match f(&token) {
            Err(e) if is_token_error(&e) => {
                log::warn!("{}: {e}; refreshing the access_token", app.name);
                self.invalidate(app, &token)?;
                let token = self.get(app)?;
                f(&token)
            }
            other => other,
        }
    }
}
