//! Durable data: the [`Store`] traits and their backends. Every method blocks, so only worker
//! threads and the persister call them; the reactor never does.
//!
//! This folder holds what outlives a process or is shared between processes: the store, split
//! by aggregate into [`UserStore`], [`WechatStore`], [`ServiceStore`], [`SocialStore`] and
//! [`MessageStore`] ([`Store`] is all five), with its backends (`sqlite/`, `mysql/`: one file
//! per aggregate beside a `mod.rs` that holds the connections, migrations and shared helpers);
//! the token, presence and cache services with their in-process and Redis (`redis.rs`) homes;
//! and the Redis/MySQL `backoff`. Wiring them from the config is the job of `src/backends.rs`.
//!
//! Imports: the store sits below chat, app, wechat and config and imports none of them (nor
//! `proto`: `proto::store_code` maps its errors from above). From the crate it uses two modules
//! only: `crate::auth` (`tokens::mint` makes and hashes a token; auth itself uses only
//! `http::url_encode`) and `crate::feed::metrics` (std only: the counter behind
//! `StoreError::unavailable`). Everything else is std, serde, log and the database clients.

pub mod backoff;
pub mod cache;
pub mod mysql;
pub mod presence;
pub mod redis;
pub mod sqlite;
pub mod tokens;

use serde::Serialize;
use std::fmt;
use std::sync::Arc;

pub type StoreResult<T> = Result<T, StoreError>;

/// Store failures, mapped outward by `proto::store_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached or failed: the request may be retried (503).
    Unavailable(String),
    /// A referenced row does not exist (404).
    NotFound(&'static str),
    /// The request contradicts stored state (409).
    Conflict(&'static str),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "storage unavailable: {e}"),
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::Conflict(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// A database or cache failure, counted in `wxchat_store_errors_total`. The backends build
    /// every `Unavailable` through this.
    pub fn unavailable(why: impl Into<String>) -> StoreError {
        crate::feed::metrics::METRICS.store_errors.inc();
        StoreError::Unavailable(why.into())
    }
}

/// A user as clients see it (no secrets: tokens and WeChat session keys live elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub uid: u64,
    pub app_uid: Option<String>,
    pub name: String,
    pub head_img: String,
    pub user_type: i64,
    pub created_at: i64,
    pub last_login_at: i64,
    pub login_count: i64,
}

/// Profile fields for creating or updating a user (None = keep / default).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub name: Option<String>,
    pub head_img: Option<String>,
    pub user_type: Option<i64>,
}

/// A WeChat login to record: the identity WeChat vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WechatIdentity {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// Mini-program logins only; kept server-side, never returned.
    pub session_key: Option<String>,
}

/// A customer-service session as stored (at most one open per customer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSession {
    pub id: u64,
    pub customer: u64,
    /// None while queued.
    pub agent: Option<u64>,
    pub created_at: i64,
    pub assigned_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub rating: Option<u8>,
    pub comment: String,
}

// `user_type`: what a user is. The one list; `profile::user_type` is the one rule for what a
// client or business backend may choose (0 to 2).
/// `user_type` of an ordinary user.
pub const USER_TYPE_USER: i64 = 0;
/// `user_type` of customer-service agents.
pub const USER_TYPE_AGENT: i64 = 1;
/// `user_type` of consultants (timed consultations name them explicitly; the type is a label).
pub const USER_TYPE_CONSULTANT: i64 = 2;
/// `user_type` of an anonymous web visitor (customer service only).
pub const USER_TYPE_VISITOR: i64 = 3;
/// `user_type` of a visitor who logged in as a registered user (their tokens are dead).
pub const USER_TYPE_CONVERTED: i64 = 4;

/// A timed consultation as stored (`chat_type` 3, conversation `c_<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Consultation {
    pub id: u64,
    pub user: u64,
    pub consultant: u64,
    /// Time bought, extensions included.
    pub total_ms: u64,
    /// As last saved (the hub holds the live figure while the time runs).
    pub remaining_ms: u64,
    /// The time is used up.
    pub ended: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A message accepted by the hub, before it has a seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub conv_id: String,
    pub chat_type: u8,
    pub from_id: u64,
    pub to_id: u64,
    pub msg_type: u8,
    /// The `msg` field, as JSON text.
    pub body: String,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
}

impl NewMessage {
    /// This message as stored under the id and seq its writer handed out.
    pub fn stored(&self, msg_id: u64, seq: u64) -> StoredMessage {
        self.stored_with_body(msg_id, seq, self.body.clone())
    }

    /// As `stored`, with the body given (moved out of a batch that is spent).
    pub fn stored_with_body(&self, msg_id: u64, seq: u64, body: String) -> StoredMessage {
        StoredMessage {
            msg_id,
            conv_id: self.conv_id.clone(),
            seq,
            chat_type: self.chat_type,
            from_id: self.from_id,
            to_id: self.to_id,
            msg_type: self.msg_type,
            body,
            created_at: self.created_at,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: u64,
    pub conv_id: String,
    pub seq: u64,
    pub chat_type: u8,
    pub from_id: u64,
    pub to_id: u64,
    pub msg_type: u8,
    pub body: String,
    pub created_at: i64,
}

/// The outcome of appending one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub message: StoredMessage,
    /// The sender's `client_msg_id` was already stored: this is the first message, unchanged.
    pub duplicate: bool,
}

/// A group as listed to its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub group_id: u64,
    pub name: String,
    pub owner_id: u64,
    pub created_at: i64,
    /// Members added after the creation may read the messages from before they joined
    /// (false: they read from their join on; the founding members always read everything).
    pub history_for_new_members: bool,
}

/// A read cursor after `mark_read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark {
    pub read_seq: u64,
    /// The call moved the cursor (a receipt is worth pushing).
    pub moved: bool,
}

/// One line of a user's conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conv_id: String,
    pub chat_type: u8,
    pub last_seq: u64,
    pub read_seq: u64,
    pub last: Option<StoredMessage>,
}

/// Users and their login tokens: registered users (by business id), profiles, the `tokens`
/// table, and anonymous web visitors (created, converted to a user, purged when idle).
pub trait UserStore: Send + Sync + 'static {
    /// Creates or updates the user with this business id; counts a login when `login`.
    fn upsert_app_user(
        &self,
        app_uid: &str,
        profile: &Profile,
        login: bool,
    ) -> StoreResult<(User, bool)>;
    fn user(&self, uid: u64) -> StoreResult<Option<User>>;
    /// The subset of `uids` that exist.
    fn existing_users(&self, uids: &[u64]) -> StoreResult<Vec<u64>>;
    /// The users among `uids` that exist, in no particular order.
    fn users(&self, uids: &[u64]) -> StoreResult<Vec<User>>;
    /// Sets the user's name and/or avatar (None keeps the field): the user afterwards and
    /// whether anything changed, or None when there is no such user.
    fn update_profile(
        &self,
        uid: u64,
        name: Option<&str>,
        head_img: Option<&str>,
    ) -> StoreResult<Option<(User, bool)>>;

    /// A new anonymous visitor (`user_type` 3).
    fn create_visitor(&self) -> StoreResult<User>;
    /// Deletes up to `limit` anonymous visitors idle since before `idle_before` (ms): created
    /// (or last logged in) before it, no message in their service conversation since, and no
    /// open service session. With each go their tokens and their conversation `s_<uid>`
    /// (messages, its row, every read cursor on it); their closed service sessions stay, as the
    /// desk's record. Returns the uids deleted (fewer than `limit`: nothing more to do now).
    fn purge_idle_visitors(&self, idle_before: i64, limit: u32) -> StoreResult<Vec<u64>>;
    /// The visitor became `uid`: marked converted (`user_type` 4, their tokens no longer
    /// authenticate) and their service sessions now belong to `uid` (an open one is closed when
    /// `uid` has one open already). NotFound / Conflict when `visitor` is not a visitor.
    fn convert_visitor(&self, visitor: u64, uid: u64) -> StoreResult<()>;

    fn put_token(&self, token_hash: &[u8], uid: u64, expires_at: i64) -> StoreResult<()>;
    /// The user a live token belongs to.
    fn token_user(&self, token_hash: &[u8], now: i64) -> StoreResult<Option<u64>>;
    fn delete_token(&self, token_hash: &[u8]) -> StoreResult<()>;
}

/// WeChat identities: the users WeChat logins map to, their mini-program session keys, and
/// where customer-service replies to a WeChat user go.
pub trait WechatStore: Send + Sync + 'static {
    /// Finds or creates the user of a WeChat identity (an identity of another app with the same
    /// unionid makes it the same user), records the session key, counts a login when `login`
    /// (a customer-service message finds its sender without logging them in). True when the
    /// user was created.
    fn wechat_login(&self, id: &WechatIdentity, login: bool) -> StoreResult<(User, bool)>;
    /// The session key of the user's latest login to this mini-program.
    fn wechat_session_key(&self, uid: u64, appid: &str) -> StoreResult<Option<String>>;

    /// Remembers that customer-service replies to `uid` go to this app's openid.
    fn set_cs_route(&self, uid: u64, appid: &str, openid: &str) -> StoreResult<()>;
    /// Where customer-service replies to `uid` go: (appid, openid), if they came from WeChat.
    fn cs_route(&self, uid: u64) -> StoreResult<Option<(String, String)>>;
}

/// Customer service and consultations: service sessions (queue, assignment, close, rating)
/// and timed consultations with their remaining time.
pub trait ServiceStore: Send + Sync + 'static {
    /// The customer's open service session, or a new queued one.
    fn open_service_session(&self, customer: u64) -> StoreResult<ServiceSession>;
    /// Records who serves the customer's open session (None: back in the queue).
    fn assign_service_session(&self, customer: u64, agent: Option<u64>) -> StoreResult<()>;
    /// Closes the customer's open session; its id, or None when there was none.
    fn close_service_session(&self, customer: u64) -> StoreResult<Option<u64>>;
    /// The customer's rating (1-5) of a closed session of theirs, once.
    fn rate_service_session(
        &self,
        id: u64,
        customer: u64,
        rating: u8,
        comment: &str,
    ) -> StoreResult<()>;
    /// Every open session, oldest first (the desk is rebuilt from them at start).
    fn open_service_sessions(&self) -> StoreResult<Vec<ServiceSession>>;

    fn create_consultation(
        &self,
        user: u64,
        consultant: u64,
        duration_ms: u64,
    ) -> StoreResult<Consultation>;
    /// Adds time (an ended consultation becomes active again).
    fn extend_consultation(&self, id: u64, extra_ms: u64) -> StoreResult<Consultation>;
    /// Ends it now (server API `consult_end`): no time left, ended; an extension reopens it.
    fn end_consultation(&self, id: u64) -> StoreResult<Consultation>;
    fn consultation(&self, id: u64) -> StoreResult<Option<Consultation>>;
    /// The user's active consultations, as user or as consultant.
    fn active_consultations(&self, uid: u64) -> StoreResult<Vec<Consultation>>;
    /// Records time used, as `(id, used_ms, ended)`: the remaining time goes down by `used_ms`
    /// (never below zero; deltas, so that an extension made meanwhile is never overwritten) and
    /// `ended` marks the consultation over.
    fn use_consultation_time(&self, used: &[(u64, u64, bool)]) -> StoreResult<()>;
}

/// The social graph: friendships, friend requests, groups and their members (with the join
/// seq that hides a group's history from new members).
pub trait SocialStore: Send + Sync + 'static {
    fn friends(&self, uid: u64) -> StoreResult<Vec<u64>>;
    fn add_friendship(&self, a: u64, b: u64) -> StoreResult<()>;
    fn remove_friendship(&self, a: u64, b: u64) -> StoreResult<()>;
    fn add_friend_request(&self, from: u64, to: u64, note: &str) -> StoreResult<()>;
    /// Removes a pending request; false when there was none.
    fn take_friend_request(&self, from: u64, to: u64) -> StoreResult<bool>;
    /// Pending requests to `uid`: (from, note, created_at).
    fn friend_requests(&self, uid: u64) -> StoreResult<Vec<(u64, String, i64)>>;

    /// A group with its founding members (who read its whole history, joining at seq 0).
    fn create_group(
        &self,
        owner: u64,
        name: &str,
        members: &[u64],
        history_for_new_members: bool,
    ) -> StoreResult<Group>;
    fn group(&self, gid: u64) -> StoreResult<Option<Group>>;
    /// Member ids, or None when the group does not exist.
    fn group_members(&self, gid: u64) -> StoreResult<Option<Vec<u64>>>;
    /// Adds members, recording the group conversation's last seq as each one's join seq
    /// (members already in keep theirs).
    fn add_group_members(&self, gid: u64, uids: &[u64]) -> StoreResult<()>;
    /// The last seq of the group conversation that `uid` may not read: their join seq when the
    /// group keeps its history from new members, else 0 (also for founders and non-members).
    fn group_history_floor(&self, gid: u64, uid: u64) -> StoreResult<u64>;
    fn remove_group_member(&self, gid: u64, uid: u64) -> StoreResult<()>;
    fn groups_of(&self, uid: u64) -> StoreResult<Vec<Group>>;
}

/// Messages and conversations: the persister's batch append (it alone writes messages), the
/// read paths (sync, history, conversation list), recall, and read cursors; `close` ends the
/// writer's work at a clean shutdown.
pub trait MessageStore: Send + Sync + 'static {
    /// Appends messages in one transaction: assigns each conversation's next seqs and message
    /// ids, returns the stored original for a repeated (from_id, client_msg_id). All or nothing.
    fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>>;

    /// `append_batch` for a caller done with the batch (the persister): a store may move the
    /// messages' bodies into the outcomes instead of copying them, so the batch's messages
    /// are left in an unspecified state.
    fn append_batch_spending(&self, batch: &mut [NewMessage]) -> StoreResult<Vec<Appended>> {
        self.append_batch(batch)
    }

    /// Whether this process is the only one writing messages to the database. The server says
    /// so once it holds the data directory (`true`), and takes it back just before it hands its
    /// listeners to a successor that will write beside it during an upgrade (`false`). A store
    /// may take faster paths while it is the sole writer (the embedded store's commit log);
    /// switching back to `false` leaves everything in the database's own tables first.
    fn set_sole_writer(&self, _sole: bool) -> StoreResult<()> {
        Ok(())
    }

    /// A clean shutdown, after the persister's last commit: leave the data complete in its
    /// main files (the embedded store folds its WAL into the database file, so a copy of that
    /// one file is a full backup). The store may still be used afterwards.
    fn close(&self) {}

    /// Messages with seq > after_seq, oldest first.
    fn sync(&self, conv_id: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>>;
    /// Messages with seq < before_seq (0 = from the newest), newest first.
    fn history(
        &self,
        conv_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>>;
    fn message(&self, msg_id: u64) -> StoreResult<Option<StoredMessage>>;
    /// Replaces a recalled message's body with JSON `null` (its seq and metadata stay).
    fn blank_message(&self, msg_id: u64) -> StoreResult<()>;
    /// The user's conversations, most recently active first.
    fn conversations(&self, uid: u64, limit: u32) -> StoreResult<Vec<ConversationSummary>>;
    /// Moves the read cursor forward (never back), no further than the conversation's last
    /// seq (a cursor past it would hide the messages still to come); returns the cursor after
    /// the call and whether it moved.
    fn mark_read(&self, uid: u64, conv_id: &str, seq: u64) -> StoreResult<ReadMark>;
    /// Members of `conv_id` whose read cursor is at least `seq`.
    fn read_count(&self, conv_id: &str, seq: u64) -> StoreResult<u64>;
}

/// The operations wxchat needs from its database: every aggregate's trait. Implementations are
/// shared between worker threads; a backend implements the five traits and is a `Store` by the
/// blanket impl below, so `Arc<dyn Store>` serves whoever needs several of them.
pub trait Store: UserStore + WechatStore + ServiceStore + SocialStore + MessageStore {}

impl<T> Store for T where T: UserStore + WechatStore + ServiceStore + SocialStore + MessageStore {}

/// The SQL both stores use for `conversations`' floors: the groups in which `uid` (the one
/// parameter) may not read what came before their join, with their join seq.
pub(crate) const GROUP_FLOORS_SQL: &str =
    "SELECT m.group_id, m.join_seq FROM group_members m JOIN `groups` g ON g.id = m.group_id
     WHERE m.user_id = ? AND m.join_seq > 0 AND g.history_for_new_members = 0";

/// A conversation list without the last message of the groups whose history is hidden from
/// the user (a member who joined after it): `sync` and `history` would not serve it either.
pub(crate) fn hide_before_join(list: &mut [ConversationSummary], floors: &[(u64, u64)]) {
    if floors.is_empty() {
        return;
    }
    for c in list.iter_mut() {
        let Some(gid) = c
            .conv_id
            .strip_prefix("g_")
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        if floors
            .iter()
            .any(|(g, floor)| *g == gid && c.last_seq <= *floor)
        {
            c.last = None;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything a worker job may use: the durable store and the token, presence and cache
/// services (in-process or Redis). Derefs to the store.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<dyn tokens::TokenStore>,
    pub presence: Arc<dyn presence::Presence>,
    pub cache: Arc<dyn cache::SharedCache>,
}

impl std::ops::Deref for Backends {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(conv_id: &str, last_seq: u64) -> ConversationSummary {
        ConversationSummary {
            conv_id: conv_id.into(),
            chat_type: 1,
            last_seq,
            read_seq: last_seq,
            last: Some(StoredMessage {
                msg_id: 1,
                conv_id: conv_id.into(),
                seq: last_seq,
                chat_type: 1,
                from_id: 1,
                to_id: 1,
                msg_type: 0,
                body: "\"x\"".into(),
                created_at: 0,
            }),
        }
    }

    #[test]
    fn a_group_message_from_before_the_join_is_not_listed() {
        let mut list = vec![
            summary("g_7", 5),
            summary("g_8", 6),
            summary("g_9", 5),
            summary("p_1_2", 3),
        ];
        hide_before_join(&mut list, &[(7, 5), (8, 5), (77, 9)]);
        let shown: Vec<bool> = list.iter().map(|c| c.last.is_some()).collect();
        assert_eq!(shown, vec![false, true, true, true]);
    }
}
