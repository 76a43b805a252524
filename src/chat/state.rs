//! The hub's in-memory state, held by the state owner (`rt::App`): sessions, who is online,
//! the friend and group caches, the customer-service desk, the consultations' clocks. Data and
//! the small rules that read it, nothing that does I/O, so this file imports nothing above
//! `rt::timer`; the handlers beside it change it.

use crate::chat::admission::RateWindow;
use crate::chat::consult_clock::Consults;
use crate::chat::desk;
use crate::chat::office_hours;
use crate::config::Config;
use crate::net::{ConnId, ConnMap};
use crate::proto;
use crate::rt::timer::AppTimer;
use crate::store::StoredMessage;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Bytes of frames a connection may send while its authentication is under way.
pub const MAX_WAITING_BYTES: usize = 64 * 1024;

/// One chat connection.
pub struct Session {
    pub uid: Option<u64>,
    /// An anonymous visitor's connection: customer-service commands only.
    pub visitor: bool,
    pub authenticating: bool,
    /// Authenticated (or being authenticated) by the doLogin cookie: an explicit token wins.
    pub via_cookie: bool,
    /// The SHA-256 of the token this connection authenticated with: online_chat frames carry a
    /// token each (`access_token`), compared with this; logout closes the connections it names.
    pub token_hash: Option<[u8; 32]>,
    /// Frames that arrived while the connection was authenticating, run once it is done
    /// (at most `MAX_WAITING_BYTES`).
    pub waiting: Waiting,
    /// Set until the connection authenticates (boxed: an authenticated session keeps 8 bytes
    /// here, not 24).
    pub auth_timer: Option<Box<AppTimer>>,
    /// Store requests in flight for this connection.
    pub pending: usize,
    /// Messages sent in the current one-second window (`[chat] max_msgs_per_sec`).
    pub rate: RateWindow,
}

/// Bytes a chat connection's session takes in `ChatState::sessions` (reserved up front, so not
/// seen by an allocation count; tests/memory_profile.rs adds it).
pub const SESSION_SLOT_BYTES: usize = ConnMap::<Session>::SLOT_BYTES;

/// A session's frames held while it authenticates: 8 bytes and no allocation the rest of the
/// time.
#[derive(Default)]
#[allow(clippy::box_collection)] // The box is the point: 8 bytes in every session, not 24.
pub struct Waiting(Option<Box<Vec<String>>>);

impl Waiting {
    pub fn push(&mut self, frame: String) {
        self.0.get_or_insert_with(Box::default).push(frame);
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.as_deref().map_or([].iter(), |v| v.iter())
    }
}

impl IntoIterator for Waiting {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map_or_else(Vec::new, |v| *v).into_iter()
    }
}

/// The hub's in-memory state (reactor-owned).
pub struct ChatState {
    /// By connection, dense by slab key (no hash table's spare buckets per idle connection).
    pub sessions: ConnMap<Session>,
    /// uid -> its open, authenticated connections.
    pub online: HashMap<u64, Conns>,
    /// Friends of online users (authorisation and presence without a store round trip).
    pub friends: HashMap<u64, FriendSet>,
    /// Group members, loaded on demand, updated by membership changes made through this server.
    pub groups: HashMap<u64, Arc<Vec<u64>>>,
    /// Online agents (`user_type` 1) on this process.
    pub agents: HashSet<u64>,
    /// Customer-service sessions: who serves whom, who waits.
    pub desk: desk::Desk,
    /// Session id -> the agent who served it, for sessions closed on this process and not yet
    /// rated: the agent is told the rating (`rated`). Bounded; the oldest entries go first.
    pub closed_by: HashMap<u64, u64>,
    pub closed_order: std::collections::VecDeque<u64>,
    pub consults: Consults,
    /// Who holds the desk and the consultations' clocks in a cluster, and what they know.
    pub role: DeskRole,
    /// Commands of connections here forwarded to the desk's node, by number, until answered
    /// or timed out.
    pub forwarded: HashMap<u64, Forwarded>,
    pub next_forward: u64,
    /// Agents' messages on their way to WeChat users.
    pub wechat_outbox: Outbox,
    pub office_hours: office_hours::OfficeHours,
    pub body_limits: proto::BodyLimits,
    /// The presence refresh timer is set (it runs while anyone is online here).
    pub presence_refresh_armed: bool,
    pub shutting_down: bool,
}

impl ChatState {
    pub fn new(config: &Config) -> ChatState {
        ChatState {
            // Reserved like the reactor's slab: address space until connections come.
            sessions: ConnMap::for_connections(config.server.max_connections),
            online: HashMap::new(),
            friends: HashMap::new(),
            groups: HashMap::new(),
            agents: HashSet::new(),
            desk: desk::Desk::new(),
            closed_by: HashMap::new(),
            closed_order: std::collections::VecDeque::new(),
            consults: Consults::default(),
            role: DeskRole::default(),
            forwarded: HashMap::new(),
            next_forward: 0,
            wechat_outbox: Outbox::default(),
            // Validated with the config.
            office_hours: office_hours::OfficeHours::parse(
                &config.service.office_hours,
                &config.service.utc_offset,
            )
            .unwrap_or_else(|_| {
                office_hours::OfficeHours::parse("", "+00:00").expect("always open parses")
            }),
            presence_refresh_armed: false,
            shutting_down: false,
            body_limits: proto::BodyLimits {
                max_text_bytes: config.chat.max_text_bytes,
            },
        }
    }

    pub fn is_online(&self, uid: u64) -> bool {
        self.online.get(&uid).is_some_and(|c| !c.is_empty())
    }

    /// Users with an authenticated connection here.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }

    /// Customers waiting for an agent.
    pub fn service_queue_len(&self) -> usize {
        self.desk.queue_len()
    }

    /// Timed consultations held in memory here.
    pub fn consultations_live(&self) -> usize {
        self.consults.len()
    }

    /// An agent online here or (on the desk's node) on another node.
    pub fn is_agent(&self, uid: u64) -> bool {
        self.agents.contains(&uid) || self.role.remote.get(&uid).is_some_and(|r| r.agent)
    }

    /// Online here or (on the desk's node) on another node the desk knows of: what the desk
    /// and the consultations' clocks go by.
    pub fn online_anywhere(&self, uid: u64) -> bool {
        self.is_online(uid) || self.role.remote.contains_key(&uid)
    }

    /// Every agent the desk knows to be online (here and on other nodes), each once.
    pub fn all_agents(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.agents.iter().copied().collect();
        v.extend(
            self.role
                .remote
                .iter()
                .filter(|(uid, r)| r.agent && !self.agents.contains(uid))
                .map(|(uid, _)| *uid),
        );
        v.sort_unstable();
        v
    }

    /// Who a service conversation's pushes go to: the customer and their agent.
    pub fn service_recipients(&self, customer: u64) -> Vec<u64> {
        self.desk.recipients(customer)
    }

    pub fn conns_of(&self, uid: u64) -> &[ConnId] {
        self.online.get(&uid).map_or(&[], |c| c)
    }
}

/// A user's connections here: the one most users have is kept inline (no allocation).
#[derive(Clone, Debug)]
pub enum Conns {
    One([ConnId; 1]),
    Many(Vec<ConnId>),
}

impl Default for Conns {
    fn default() -> Self {
        Conns::Many(Vec::new())
    }
}

impl std::ops::Deref for Conns {
    type Target = [ConnId];

    fn deref(&self) -> &[ConnId] {
        match self {
            Conns::One(one) => one,
            Conns::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a Conns {
    type Item = &'a ConnId;
    type IntoIter = std::slice::Iter<'a, ConnId>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Conns {
    pub fn push(&mut self, conn: ConnId) {
        match self {
            Conns::Many(v) if v.is_empty() => *self = Conns::One([conn]),
            Conns::Many(v) => v.push(conn),
            Conns::One([first]) => *self = Conns::Many(vec![*first, conn]),
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&ConnId) -> bool) {
        match self {
            Conns::One([c]) => {
                if !keep(c) {
                    *self = Conns::default();
                }
            }
            Conns::Many(v) => {
                v.retain(keep);
                if let [one] = v[..] {
                    *self = Conns::One([one]);
                }
            }
        }
    }
}

/// An online user's friends: a sorted boxed slice (16 bytes, none allocated for nobody), not
/// a hash set (48 bytes before its table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FriendSet(Box<[u64]>);

impl FriendSet {
    pub fn contains(&self, uid: &u64) -> bool {
        self.0.binary_search(uid).is_ok()
    }

    /// Adds `uid`; false when it was there already.
    pub fn insert(&mut self, uid: u64) -> bool {
        match self.0.binary_search(&uid) {
            Ok(_) => false,
            Err(at) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(at, uid);
                self.0 = v.into_boxed_slice();
                true
            }
        }
    }

    /// Removes `uid`; false when it was not there.
    pub fn remove(&mut self, uid: &u64) -> bool {
        match self.0.binary_search(uid) {
            Ok(at) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.remove(at);
                self.0 = v.into_boxed_slice();
                true
            }
            Err(_) => false,
        }
    }

    pub fn clear(&mut self) {
        self.0 = Box::default();
    }

    pub fn iter(&self) -> std::slice::Iter<'_, u64> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<u64> for FriendSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> FriendSet {
        let mut v: Vec<u64> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        FriendSet(v.into_boxed_slice())
    }
}

/// The desk's node in a cluster. One node at a time holds the desk lease (`chat::desk_lease`):
/// it runs the customer-service desk and the consultations' clocks; the others forward it the
/// commands and events those need. Without a bus the node is always the desk's.
#[derive(Default)]
pub struct DeskRole {
    /// The lease's holder as last read (None: not known yet).
    pub owner: Option<String>,
    /// This node holds the lease.
    pub mine: bool,
    /// This node took the lease and is loading the open sessions: operations wait in `held`.
    pub restoring: bool,
    /// Operations from other nodes that arrived while restoring (origin node, operation).
    pub held: VecDeque<(String, String)>,
    /// On the desk's node: users of other nodes the desk and the clocks care about.
    pub remote: HashMap<u64, RemoteUser>,
    /// On every node: the users here reported to the desk's node (agents, sides of a
    /// consultation), with whether each is an agent.
    pub reported: HashMap<u64, bool>,
    /// On the desk's node: when each other node last reported (silent ones are dead).
    pub last_seen: HashMap<String, std::time::Instant>,
}

/// A command forwarded to the desk's node, waiting for its reply.
pub struct Forwarded {
    pub conn: ConnId,
    pub uid: u64,
    pub cmd: String,
    pub req_id: Option<serde_json::Value>,
    /// Answers 503 if the desk's node does not (it may have died with the command).
    pub timer: Option<AppTimer>,
}

/// A user connected to other nodes, as the desk's node knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteUser {
    pub agent: bool,
    /// The nodes holding a connection of theirs.
    pub nodes: Vec<String>,
}

impl DeskRole {
    /// Most operations held while restoring; more are dropped (their senders retry).
    pub const HELD_MAX: usize = 65_536;

    /// `uid` is connected to `node`; true when they were not known to be online elsewhere.
    pub fn remote_online(&mut self, uid: u64, agent: bool, node: &str) -> bool {
        let new = !self.remote.contains_key(&uid);
        let r = self.remote.entry(uid).or_default();
        r.agent |= agent;
        if !r.nodes.iter().any(|n| n == node) {
            r.nodes.push(node.to_string());
        }
        new
    }

    /// `uid` has no connection left on `node`; true when they are gone from every other node.
    pub fn remote_offline(&mut self, uid: u64, node: &str) -> bool {
        let Some(r) = self.remote.get_mut(&uid) else {
            return false;
        };
        r.nodes.retain(|n| n != node);
        if r.nodes.is_empty() {
            self.remote.remove(&uid);
            return true;
        }
        false
    }

    /// `node`'s users as it reports them now: those it held before and no longer lists are
    /// gone from it. Returns the users that came and the users (with whether each is an agent)
    /// that left the cluster's view.
    pub fn replace_node(
        &mut self,
        node: &str,
        users: &[(u64, bool)],
    ) -> (Vec<u64>, Vec<(u64, bool)>) {
        let listed: HashSet<u64> = users.iter().map(|(u, _)| *u).collect();
        let before: Vec<(u64, bool)> = self
            .remote
            .iter()
            .filter(|(u, r)| !listed.contains(u) && r.nodes.iter().any(|n| n == node))
            .map(|(u, r)| (*u, r.agent))
            .collect();
        let left = before
            .into_iter()
            .filter(|(uid, _)| self.remote_offline(*uid, node))
            .collect();
        let came = users
            .iter()
            .filter(|(uid, agent)| self.remote_online(*uid, *agent, node))
            .map(|(uid, _)| *uid)
            .collect();
        (came, left)
    }

    /// Every user of `node` (it died or lost its lease view): those gone from the cluster, with
    /// whether each is an agent.
    pub fn drop_node(&mut self, node: &str) -> Vec<(u64, bool)> {
        self.replace_node(node, &[]).1
    }
}

/// Agents' messages waiting to go to WeChat, per customer (one call in flight each).
#[derive(Default)]
pub struct Outbox {
    pub queues: HashMap<u64, VecDeque<StoredMessage>>,
}

impl Outbox {
    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_user_is_online_until_their_last_node_goes() {
        let mut r = DeskRole::default();
        assert!(r.remote_online(7, true, "a"));
        assert!(!r.remote_online(7, true, "b"));
        assert!(!r.remote_offline(7, "a"));
        assert!(r.remote.get(&7).is_some_and(|u| u.agent));
        assert!(r.remote_offline(7, "b"));
        assert!(r.remote.is_empty());
        assert!(!r.remote_offline(7, "b"));
    }

    #[test]
    fn a_snapshot_replaces_what_a_node_held() {
        let mut r = DeskRole::default();
        r.remote_online(1, false, "a");
        r.remote_online(2, true, "a");
        r.remote_online(2, true, "b");
        let (came, left) = r.replace_node("a", &[(2, true), (3, false)]);
        assert_eq!(came, vec![3]);
        assert_eq!(left, vec![(1, false)]);
        assert_eq!(r.drop_node("b"), Vec::<(u64, bool)>::new());
        let mut gone = r.drop_node("a");
        gone.sort_unstable();
        assert_eq!(gone, vec![(2, true), (3, false)]);
    }
}
