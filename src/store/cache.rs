//! Small shared state with expiry: cached values (the WeChat access_token slot), locks for
//! single-flight refreshes, and fixed-window counters for rate limits that must hold across
//! processes. In-process here; `store::redis` shares it between nodes.

use super::{StoreError, StoreResult};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub trait SharedCache: Send + Sync + 'static {
    fn get(&self, key: &str) -> StoreResult<Option<String>>;
    fn set(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()>;
    fn delete(&self, key: &str) -> StoreResult<()>;
    /// Takes the lock `key` for at most `ttl` when it is free: the owner token to release it
    /// with, or None when someone else holds it.
    fn try_lock(&self, key: &str, ttl: Duration) -> StoreResult<Option<String>>;
    /// Releases the lock if `owner` still holds it (an expired lock may have a new owner).
    fn unlock(&self, key: &str, owner: &str) -> StoreResult<()>;
    /// A lease renewed by its holder: takes `key` for `holder` when it is free, extends it to
    /// `ttl` when `holder` has it already, and returns whoever holds it now (the holder's lease
    /// lapses `ttl` after its last renewal).
    fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<String>;
    /// Gives the lease up if `holder` has it (a clean shutdown: the next holder need not wait
    /// for it to lapse).
    fn release(&self, key: &str, holder: &str) -> StoreResult<()>;
    /// Counts one event in the window that started with the first event after the previous
    /// window ended; returns the count so far in this window.
    fn incr_window(&self, key: &str, window: Duration) -> StoreResult<u64>;
    /// The count of the current window of `key` (0 when none is running), without counting.
    fn peek_window(&self, key: &str) -> StoreResult<u64>;
}

/// A random lock owner token.
pub fn lock_owner() -> StoreResult<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| StoreError::unavailable(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[derive(Default)]
struct Entries {
    values: HashMap<String, (String, Instant)>,
    locks: HashMap<String, (String, Instant)>,
    counters: HashMap<String, (u64, Instant)>,
}

/// The in-process cache.
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<Entries>,
}

impl MemoryCache {
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops expired entries now and then so abandoned keys do not accumulate.
    fn sweep(e: &mut Entries, now: Instant) {
        if e.values.len() + e.locks.len() + e.counters.len() > 4096 {
            e.values.retain(|_, (_, until)| *until > now);
            e.locks.retain(|_, (_, until)| *until > now);
            e.counters.retain(|_, (_, until)| *until > now);
        }
    }
}

impl SharedCache for MemoryCache {
    fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let now = Instant::now();
        let e = self.entries();
        Ok(e.values
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone()))
    }

    fn set(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
        let now = Instant::now();
        let mut e = self.entries();
        Self::sweep(&mut e, now);
        e.values
            .insert(key.to_string(), (value.to_string(), now + ttl));
        Ok(())
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        self.entries().values.remove(key);
        Ok(())
    }

    fn try_lock(&self, key: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let now = Instant::now();
        let mut e = self.entries();
        Self::sweep(&mut e, now);
        if e.locks.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let owner = lock_owner()?;
        e.locks.insert(key.to_string(), (owner.clone(), now + ttl));
        Ok(Some(owner))
    }

    fn unlock(&self, key: &str, owner: &str) -> StoreResult<()> {
        let mut e = self.entries();
        if e.locks.get(key).is_some_and(|(o, _)| o == owner) {
            e.locks.remove(key);
        }
        Ok(())
    }

    fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<String> {
        let now = Instant::now();
        let mut e = self.entries();
        Self::sweep(&mut e, now);
        let key = format!("lease:{key}");
        match e.locks.get_mut(&key) {
            Some((h, until)) if *until > now => {
                if h == holder {
                    *until = now + ttl;
                }
                Ok(h.clone())
            }
            _ => {
                e.locks.insert(key, (holder.to_string(), now + ttl));
                Ok(holder.to_string())
            }
        }
    }

    fn release(&self, key: &str, holder: &str) -> StoreResult<()> {
        // Leases live beside the locks, under `lease:`.
        self.unlock(&format!("lease:{key}"), holder)
    }

    fn incr_window(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let now = Instant::now();
        let mut e = self.entries();
        Self::sweep(&mut e, now);
        let slot = e
            .counters
            .entry(key.to_string())
            .or_insert((0, now + window));
        if slot.1 <= now {
            *slot = (0, now + window);
        }
        slot.0 += 1;
        Ok(slot.0)
    }

    fn peek_window(&self, key: &str) -> StoreResult<u64> {
        let now = Instant::now();
        Ok(self
            .entries()
            .counters
            .get(key)
            .filter(|(_, until)| *until > now)
            .map_or(0, |(n, _)| *n))
    }
}
