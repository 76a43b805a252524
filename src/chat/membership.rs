//! Group membership rules, pure: who hears of a change, which messages a member may page
//! through, and the group option read from `group_create`.

use crate::store::StoredMessage;
use serde_json::Value;

/// Who is told of a membership change: the members after it, plus those it concerns (who are
/// among them after a join, and not after a leave). Each uid once, ascending: a duplicate would
/// push the same `group_event` twice to that user.
pub fn audience(members: &[u64], changed: &[u64]) -> Vec<u64> {
    let mut all: Vec<u64> = members.iter().chain(changed).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Where a member's `sync` starts: after what they asked for, and never at or below their
/// history floor (`Store::group_history_floor`, 0 = the whole history).
pub fn sync_after(after_seq: u64, floor: u64) -> u64 {
    after_seq.max(floor)
}

/// A `history` page (newest first) without what lies at or below the member's floor. Seqs are
/// contiguous, so what remains is a prefix, and a page cut here has nothing more behind it.
pub fn trim_history(page: &mut Vec<StoredMessage>, floor: u64) {
    page.retain(|m| m.seq > floor);
}

/// `history_for_new_members` of `group_create` (client command and server API): absent or null
/// is false.
pub fn history_option(v: Option<&Value>) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err("history_for_new_members must be true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            msg_id: seq,
            conv_id: "g_1".into(),
            seq,
            chat_type: 1,
            from_id: 1,
            to_id: 1,
            msg_type: 0,
            body: "\"x\"".into(),
            created_at: 0,
        }
    }

    #[test]
    fn a_joiner_already_in_the_list_is_told_once() {
        assert_eq!(audience(&[1, 2, 5], &[5]), vec![1, 2, 5]);
        assert_eq!(audience(&[1, 2, 5], &[5, 2, 5]), vec![1, 2, 5]);
    }

    #[test]
    fn those_who_left_are_told_too() {
        assert_eq!(audience(&[1, 5], &[3]), vec![1, 3, 5]);
        assert_eq!(audience(&[], &[3]), vec![3]);
    }

    #[test]
    fn sync_never_starts_below_the_floor() {
        assert_eq!(sync_after(0, 14), 14);
        assert_eq!(sync_after(20, 14), 20);
        assert_eq!(sync_after(3, 0), 3);
    }

    #[test]
    fn history_stops_at_the_floor() {
        let mut page: Vec<StoredMessage> = (10..=16).rev().map(msg).collect();
        trim_history(&mut page, 14);
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![16, 15]);
        let mut all: Vec<StoredMessage> = (1..=3).rev().map(msg).collect();
        trim_history(&mut all, 0);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn the_history_option_is_a_boolean() {
        assert_eq!(history_option(None), Ok(false));
        assert_eq!(history_option(Some(&Value::Null)), Ok(false));
        assert_eq!(history_option(Some(&json!(true))), Ok(true));
        assert_eq!(history_option(Some(&json!(false))), Ok(false));
        assert!(history_option(Some(&json!(1))).is_err());
        assert!(history_option(Some(&json!("true"))).is_err());
    }
}
