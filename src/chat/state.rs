//! The hub's in-memory state, held by the state owner (`rt::App`): sessions, who is online,
//! the friend and group caches, the customer-service desk, the consultations' clocks. Data and
//! the small rules that read it, nothing that does I/O, so this file imports nothing above
//! `rt::timer`; the handlers beside it change it.

use crate::chat::admission::RateWindow;
use crate::chat::consult_clock::Consults;
use crate::chat::desk;
use crate::chat::office_hours;
use crate::config::Config;
use crate::net::ConnId;
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
    pub waiting: Vec<String>,
    pub auth_timer: Option<AppTimer>,
    /// Store requests in flight for this connection.
    pub pending: usize,
    /// Messages sent in the current one-second window (`[chat] max_msgs_per_sec`).
    pub rate: RateWindow,
}

/// The hub's in-memory state (reactor-owned).
pub struct ChatState {
    pub sessions: HashMap<ConnId, Session>,
    /// uid -> its open, authenticated connections.
    pub online: HashMap<u64, Vec<ConnId>>,
    /// Friends of online users (authorisation and presence without a store round trip).
    pub friends: HashMap<u64, HashSet<u64>>,
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
            sessions: HashMap::new(),
            online: HashMap::new(),
            friends: HashMap::new(),
            groups: HashMap::new(),
            agents: HashSet::new(),
            desk: desk::Desk::new(),
            closed_by: HashMap::new(),
            closed_order: std::collections::VecDeque::new(),
            consults: Consults::default(),
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

    pub fn is_agent(&self, uid: u64) -> bool {
        self.agents.contains(&uid)
    }

    /// Who a service conversation's pushes go to: the customer and their agent.
    pub fn service_recipients(&self, customer: u64) -> Vec<u64> {
        self.desk.recipients(customer)
    }

    pub fn conns_of(&self, uid: u64) -> &[ConnId] {
        self.online.get(&uid).map_or(&[], Vec::as_slice)
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
