//! The send pipeline's rules, pure (no I/O; the time and what the caches know are passed in):
//! the per-connection rate window, who a message may go to, and what follows a commit (a
//! resent `client_msg_id` is acknowledged again and delivered to no one). `send.rs` carries the
//! decisions out. A core held by the state owner (the rate window lives in each session), so
//! this file imports nothing above `proto`.

use crate::proto::{chat_type, code, msg_type, Failure};
use crate::store::StoredMessage;
use std::time::{Duration, Instant};

/// Messages a connection sent in the current one-second window.
#[derive(Clone, Copy, Debug)]
pub struct RateWindow {
    start: Instant,
    count: u32,
}

impl RateWindow {
    pub fn new(now: Instant) -> RateWindow {
        RateWindow {
            start: now,
            count: 0,
        }
    }

    /// Counts one message at `now`; Err when it is over `limit` per second (0: no limit).
    pub fn hit(&mut self, now: Instant, limit: u32) -> Result<(), Failure> {
        if now.saturating_duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if limit > 0 && self.count > limit {
            return Err(Failure(
                code::RATE_LIMITED,
                format!("over {limit} messages per second"),
            ));
        }
        Ok(())
    }
}

/// How a one-to-one message is authorised.
#[derive(Debug, PartialEq, Eq)]
pub enum FriendRoute {
    /// Friends, as the cache knows: submit.
    Submit,
    /// Not friends in the cache, which may miss a friendship made through another process:
    /// ask the store before refusing.
    CheckFriendship,
    /// Strangers may write (`[chat] allow_strangers`): submit once the recipient exists.
    CheckRecipient,
}

/// The route of a one-to-one message from `uid` to `to_id`.
pub fn friend_route(
    uid: u64,
    to_id: u64,
    friends_in_cache: bool,
    allow_strangers: bool,
) -> Result<FriendRoute, Failure> {
    if to_id == uid {
        return Err(Failure::bad_request("cannot send to yourself"));
    }
    Ok(if friends_in_cache {
        FriendRoute::Submit
    } else if allow_strangers {
        FriendRoute::CheckRecipient
    } else {
        FriendRoute::CheckFriendship
    })
}

/// Who writes in a customer-service conversation.
#[derive(Debug, PartialEq, Eq)]
pub enum ServiceRoute {
    /// A customer writes to customer service: their own conversation.
    Customer,
    /// An agent answers the customer `to_id` (whom they must be serving).
    Agent { customer: u64 },
}

/// The route of a customer-service message (`msg_type` checked: no recall through `send`).
pub fn service_route(
    uid: u64,
    is_agent: bool,
    to_id: u64,
    mt: u8,
) -> Result<ServiceRoute, Failure> {
    if mt >= msg_type::RECALL {
        return Err(Failure::bad_request("unknown msg_type"));
    }
    if !is_agent {
        return Ok(ServiceRoute::Customer);
    }
    if to_id == 0 || to_id == uid {
        return Err(Failure::bad_request(
            "an agent's to_id is the customer's uid",
        ));
    }
    Ok(ServiceRoute::Agent { customer: to_id })
}

/// What follows a commit, besides the sender's ack (which is always sent: a resent
/// `client_msg_id` gets the first message's ack again, marked `duplicate`).
#[derive(Debug, PartialEq, Eq)]
pub struct AfterCommit {
    /// Deliver to the conversation (never twice: not for a duplicate).
    pub fan_out: bool,
    /// An agent's answer in a customer's service conversation: it also goes out through the
    /// WeChat customer-service API (when the customer is a WeChat user).
    pub to_wechat: bool,
}

pub fn after_commit(m: &StoredMessage, duplicate: bool) -> AfterCommit {
    let fan_out = !duplicate;
    AfterCommit {
        fan_out,
        to_wechat: fan_out
            && m.chat_type == chat_type::SERVICE
            && m.to_id != 0
            && m.from_id != m.to_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_window_counts_per_second_and_zero_means_no_limit() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0);
        assert!(w.hit(t0, 2).is_ok());
        assert!(w.hit(t0 + Duration::from_millis(500), 2).is_ok());
        let over = w.hit(t0 + Duration::from_millis(999), 2).unwrap_err();
        assert_eq!(over.code(), code::RATE_LIMITED);
        assert_eq!(over.msg(), "over 2 messages per second");
        // A new window starts a second after the last one did.
        assert!(w.hit(t0 + Duration::from_secs(1), 2).is_ok());
        let mut free = RateWindow::new(t0);
        for _ in 0..10_000 {
            assert!(free.hit(t0, 0).is_ok());
        }
    }

    #[test]
    fn one_to_one_routes() {
        assert_eq!(friend_route(1, 2, true, false), Ok(FriendRoute::Submit));
        assert_eq!(friend_route(1, 2, true, true), Ok(FriendRoute::Submit));
        assert_eq!(
            friend_route(1, 2, false, false),
            Ok(FriendRoute::CheckFriendship)
        );
        assert_eq!(
            friend_route(1, 2, false, true),
            Ok(FriendRoute::CheckRecipient)
        );
        assert_eq!(
            friend_route(1, 1, true, true),
            Err(Failure::bad_request("cannot send to yourself"))
        );
    }

    #[test]
    fn service_routes() {
        assert_eq!(
            service_route(5, false, 0, msg_type::TEXT),
            Ok(ServiceRoute::Customer)
        );
        // A customer's to_id is ignored: they always write to their own conversation.
        assert_eq!(
            service_route(5, false, 9, msg_type::TEXT),
            Ok(ServiceRoute::Customer)
        );
        assert_eq!(
            service_route(7, true, 5, msg_type::IMAGE),
            Ok(ServiceRoute::Agent { customer: 5 })
        );
        for to in [0, 7] {
            assert_eq!(
                service_route(7, true, to, msg_type::TEXT)
                    .unwrap_err()
                    .code(),
                code::BAD_REQUEST
            );
        }
        assert_eq!(
            service_route(5, false, 0, msg_type::RECALL),
            Err(Failure::bad_request("unknown msg_type"))
        );
    }

    fn stored(chat_type: u8, from_id: u64, to_id: u64) -> StoredMessage {
        StoredMessage {
            msg_id: 1,
            conv_id: "s_5".into(),
            seq: 1,
            chat_type,
            from_id,
            to_id,
            msg_type: msg_type::TEXT,
            body: "\"hi\"".into(),
            created_at: 0,
        }
    }

    #[test]
    fn a_duplicate_is_acknowledged_and_delivered_to_no_one() {
        let agent_answer = stored(chat_type::SERVICE, 7, 5);
        assert_eq!(
            after_commit(&agent_answer, false),
            AfterCommit {
                fan_out: true,
                to_wechat: true
            }
        );
        assert_eq!(
            after_commit(&agent_answer, true),
            AfterCommit {
                fan_out: false,
                to_wechat: false
            }
        );
        // A customer's own message, and a friend message, do not go to WeChat.
        assert!(!after_commit(&stored(chat_type::SERVICE, 5, 0), false).to_wechat);
        assert!(!after_commit(&stored(chat_type::FRIEND, 5, 6), false).to_wechat);
    }
}
