//! Login tokens: who a token belongs to, until it expires or is revoked. Tokens are kept only as
//! SHA-256 hashes (see `auth::token_hash`). Two homes: the database (embedded default, and MySQL
//! without Redis: tokens survive restarts) and Redis (`SET .. EX`, see `store::redis`).

use super::{now_ms, Store, StoreResult};
use std::sync::Arc;

pub trait TokenStore: Send + Sync + 'static {
    /// Records a new token for `uid`, valid for `ttl_s` seconds.
    fn put(&self, token_hash: &[u8], uid: u64, ttl_s: u64) -> StoreResult<()>;
    /// The user of a live token.
    fn user(&self, token_hash: &[u8]) -> StoreResult<Option<u64>>;
    /// Revokes a token (logout); revoking an unknown token is not an error.
    fn revoke(&self, token_hash: &[u8]) -> StoreResult<()>;
}

/// Mints a new token for `uid`, valid `ttl_s` seconds, and returns it: the one way every login
/// (doLogin, the server API, WeChat, QR, visitors, demo) issues tokens. Only its hash is stored.
pub fn mint(tokens: &dyn TokenStore, uid: u64, ttl_s: u64) -> StoreResult<String> {
    let token = crate::auth::new_token().map_err(super::StoreError::unavailable)?;
    tokens.put(&crate::auth::token_hash(&token), uid, ttl_s)?;
    Ok(token)
}

/// Tokens in the durable store's `tokens` table.
pub struct DbTokens(pub Arc<dyn Store>);

impl TokenStore for DbTokens {
    fn put(&self, token_hash: &[u8], uid: u64, ttl_s: u64) -> StoreResult<()> {
        let expires = now_ms().saturating_add((ttl_s as i64).saturating_mul(1000));
        self.0.put_token(token_hash, uid, expires)
    }

    fn user(&self, token_hash: &[u8]) -> StoreResult<Option<u64>> {
        self.0.token_user(token_hash, now_ms())
    }

    fn revoke(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.0.delete_token(token_hash)
    }
}
