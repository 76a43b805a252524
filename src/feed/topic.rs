//! Info topics and the subscription specs that select them, in online_chat's form:
//! `all`, `message`, `serverInfo`, `message;uid=1;chat_type=1`.
//!
//! A spec is a topic (or `all`) followed by `;key=value` conditions, all of which must hold. A
//! value may list alternatives: `uid=1,2`. `uid` matches an event's `uid`, `from_id` or `to_id`
//! (so `all;uid=1` is everything about user 1); these fields only ever hold users (a group
//! message names its group as `group_id`), so a uid never matches a group. Any other key matches
//! the event field of that name. An event without the field does not match. A subscriber's specs
//! are alternatives.

use serde_json::{Map, Value};

/// What the server publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    ServerInfo,
    Connection,
    Message,
    Login,
    Wechat,
    Error,
}

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::ServerInfo,
        Topic::Connection,
        Topic::Message,
        Topic::Login,
        Topic::Wechat,
        Topic::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::ServerInfo => "serverInfo",
            Topic::Connection => "connection",
            Topic::Message => "message",
            Topic::Login => "login",
            Topic::Wechat => "wechat",
            Topic::Error => "error",
        }
    }

    /// Case-insensitive, so `serverinfo` and `serverInfo` both work.
    pub fn parse(name: &str) -> Option<Topic> {
        Topic::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// This topic's bit in a topic mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Every topic's bit.
pub const ALL_TOPICS: u8 = (1 << Topic::ALL.len()) - 1;

/// Conditions per spec at most, and alternatives per condition.
const MAX_CONDITIONS: usize = 8;
const MAX_VALUES: usize = 32;
/// A spec's length at most.
pub const MAX_SPEC_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    key: String,
    values: Vec<String>,
}

/// One parsed spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Topic bits this spec selects.
    pub topics: u8,
    conditions: Vec<Condition>,
}

impl Subscription {
    /// Parses `topic[;key=value[,value...]]...`; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Subscription, String> {
        if spec.len() > MAX_SPEC_BYTES {
            return Err(format!("topic spec over {MAX_SPEC_BYTES} bytes"));
        }
        let mut parts = spec.split(';').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let topics = if head.eq_ignore_ascii_case("all") {
            ALL_TOPICS
        } else {
            match Topic::parse(head) {
                Some(t) => t.bit(),
                None => {
                    return Err(format!(
                        "unknown topic {head:?}: use all, {}",
                        Topic::ALL.map(Topic::name).join(", ")
                    ))
                }
            }
        };
        let mut conditions = Vec::new();
        for part in parts.filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("condition {part:?} is not key=value"));
            };
            let key = key.trim();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "condition key {key:?} must be letters, digits or _"
                ));
            }
            let values: Vec<String> = value
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                return Err(format!("condition {key} has no value"));
            }
            if values.len() > MAX_VALUES {
                return Err(format!("condition {key} lists over {MAX_VALUES} values"));
            }
            conditions.push(Condition {
                key: key.to_string(),
                values,
            });
            if conditions.len() > MAX_CONDITIONS {
                return Err(format!("over {MAX_CONDITIONS} conditions"));
            }
        }
        Ok(Subscription { topics, conditions })
    }

    /// Does an event of `topic` with these fields pass?
    pub fn matches(&self, topic: Topic, fields: &Map<String, Value>) -> bool {
        self.topics & topic.bit() != 0 && self.conditions.iter().all(|c| c.holds(fields))
    }
}

impl Condition {
    fn holds(&self, fields: &Map<String, Value>) -> bool {
        let own = [self.key.as_str()];
        let keys: &[&str] = if self.key == "uid" {
            &["uid", "from_id", "to_id"]
        } else {
            &own
        };
        keys.iter()
            .filter_map(|k| fields.get(*k))
            .any(|v| self.values.iter().any(|want| equals(v, want)))
    }
}

/// Compares a field with a condition's text: numbers and booleans by their JSON text, strings as
/// they are.
fn equals(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Number(n) => {
            // 1 and 1.0 are the same number.
            n.to_string() == want
                || matches!((n.as_f64(), want.parse::<f64>()), (Some(a), Ok(b)) if a == b)
        }
        Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
        _ => false,
    }
}

/// The union of the topics `subs` select.
pub fn mask_of<'a>(subs: impl IntoIterator<Item = &'a Subscription>) -> u8 {
    subs.into_iter().fold(0, |m, s| m | s.topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn online_chat_specs_parse() {
        assert_eq!(Subscription::parse("all").unwrap().topics, ALL_TOPICS);
        assert_eq!(
            Subscription::parse("serverInfo").unwrap().topics,
            Topic::ServerInfo.bit()
        );
        assert_eq!(
            Subscription::parse("serverinfo").unwrap().topics,
            Topic::ServerInfo.bit()
        );
        let s = Subscription::parse("message;uid=1;chat_type=1").unwrap();
        assert_eq!(s.topics, Topic::Message.bit());
        assert_eq!(s.conditions.len(), 2);
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(Subscription::parse("mesage")
            .unwrap_err()
            .contains("unknown topic"));
        assert!(Subscription::parse("all;uid")
            .unwrap_err()
            .contains("key=value"));
        assert!(Subscription::parse("all;uid=")
            .unwrap_err()
            .contains("no value"));
        assert!(Subscription::parse("all;u id=1").is_err());
        assert!(Subscription::parse(&format!("all;uid={}", "1,".repeat(40))).is_err());
        assert!(Subscription::parse(&"a".repeat(600)).is_err());
    }

    #[test]
    fn uid_matches_sender_receiver_or_subject() {
        let s = Subscription::parse("all;uid=1").unwrap();
        let msg = fields(json!({"from_id": 1, "to_id": 2, "chat_type": 0}));
        assert!(s.matches(Topic::Message, &msg));
        let to_me = fields(json!({"from_id": 3, "to_id": 1}));
        assert!(s.matches(Topic::Message, &to_me));
        let conn = fields(json!({"uid": 1, "event": "auth"}));
        assert!(s.matches(Topic::Connection, &conn));
        let other = fields(json!({"from_id": 2, "to_id": 3}));
        assert!(!s.matches(Topic::Message, &other));
        // A group message names its group apart from users: uid=1 is not group 1, but its
        // sender, and group_id follows the group.
        let to_group_1 = fields(json!({"from_id": 2, "group_id": 1, "chat_type": 1}));
        assert!(!s.matches(Topic::Message, &to_group_1));
        let from_me = fields(json!({"from_id": 1, "group_id": 5, "chat_type": 1}));
        assert!(s.matches(Topic::Message, &from_me));
        let group = Subscription::parse("message;group_id=1").unwrap();
        assert!(group.matches(Topic::Message, &to_group_1));
        // serverInfo has no uid: a uid filter excludes it.
        assert!(!s.matches(Topic::ServerInfo, &fields(json!({"connections": 1}))));
    }

    #[test]
    fn all_conditions_must_hold_and_values_are_alternatives() {
        let s = Subscription::parse("message;uid=1,7;chat_type=1").unwrap();
        let group = fields(json!({"from_id": 7, "group_id": 40, "chat_type": 1}));
        assert!(s.matches(Topic::Message, &group));
        let friend = fields(json!({"from_id": 7, "to_id": 2, "chat_type": 0}));
        assert!(!s.matches(Topic::Message, &friend));
        assert!(!s.matches(Topic::Login, &group), "another topic");
        let strings = Subscription::parse("wechat;app=shop;ok=true").unwrap();
        assert!(strings.matches(Topic::Wechat, &fields(json!({"app": "shop", "ok": true}))));
        assert!(!strings.matches(Topic::Wechat, &fields(json!({"app": "shop", "ok": false}))));
    }

    #[test]
    fn mask_is_the_union() {
        let a = Subscription::parse("message").unwrap();
        let b = Subscription::parse("login;uid=3").unwrap();
        assert_eq!(mask_of([&a, &b]), Topic::Message.bit() | Topic::Login.bit());
        assert_eq!(mask_of(std::iter::empty::<&Subscription>()), 0);
    }
}
