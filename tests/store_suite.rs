//! One behavioural suite for the `Store` trait, run on the embedded SQLite store and on a real
//! MySQL/MariaDB (a fresh database per test, dropped afterwards). Both must behave identically.

mod common;

use common::services::TestDb;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use wxchat::store::mysql::MysqlStore;
use wxchat::store::sqlite::SqliteStore;
use wxchat::store::{
    NewMessage, Profile, Store, StoreError, WechatIdentity, USER_TYPE_CONVERTED, USER_TYPE_VISITOR,
};

/// A store under test, with a way to open it again (a restart) and what keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    reopen: Box<dyn Fn() -> Arc<dyn Store>>,
    _guard: Box<dyn std::any::Any>,
}

fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let open = move || -> Arc<dyn Store> { Arc::new(SqliteStore::open(&path, false).unwrap()) };
    Fixture {
        store: open(),
        reopen: Box::new(open),
        _guard: Box::new(dir),
    }
}

/// The embedded store as the server runs it: the sole writer, small batches through its commit
/// log. A reopen is a restart: the running store is closed first (which applies its log and
/// lets it go), as a server stopping does before the next one starts.
fn sqlite_logged() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let running: std::sync::Mutex<Option<Arc<dyn Store>>> = std::sync::Mutex::new(None);
    let open = move || -> Arc<dyn Store> {
        if let Some(old) = running.lock().unwrap().take() {
            old.close();
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, false).unwrap());
        store.set_sole_writer(true).unwrap();
        *running.lock().unwrap() = Some(store.clone());
        store
    };
    Fixture {
        store: open(),
        reopen: Box::new(open),
        _guard: Box::new(dir),
    }
}

fn mysql() -> Fixture {
    let db = TestDb::create();
    let url = db.url.clone();
    let open = move || -> Arc<dyn Store> {
        Arc::new(MysqlStore::open(&url, 4, Duration::from_secs(10)).unwrap())
    };
    Fixture {
        store: open(),
        reopen: Box::new(open),
        _guard: Box::new(db),
    }
}

fn msg(conv: &str, from: u64, to: u64, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        conv_id: conv.into(),
        chat_type: 0,
        from_id: from,
        to_id: to,
        msg_type: 0,
        body: "\"hi\"".into(),
        client_msg_id: cmid.map(String::from),
        created_at: 1,
    }
}

fn group_msg(gid: u64, from: u64, n: u64) -> NewMessage {
    NewMessage {
        conv_id: format!("g_{gid}"),
        chat_type: 1,
        from_id: from,
        to_id: gid,
        msg_type: 0,
        body: format!("\"g{n}\""),
        client_msg_id: None,
        created_at: n as i64,
    }
}

fn seqs_start_at_one_and_have_no_gaps_across_batches_and_reopen(f: Fixture) {
    let s = &f.store;
    let a = s
        .append_batch(&[
            msg("p_1_2", 1, 2, None),
            msg("p_1_3", 1, 3, None),
            msg("p_1_2", 2, 1, None),
        ])
        .unwrap();
    assert_eq!(
        a.iter().map(|x| x.message.seq).collect::<Vec<_>>(),
        vec![1, 1, 2]
    );
    let ids: HashSet<u64> = a.iter().map(|x| x.message.msg_id).collect();
    assert_eq!(ids.len(), 3, "distinct msg ids");
    let s2 = (f.reopen)();
    let b = s2.append_batch(&[msg("p_1_2", 1, 2, None)]).unwrap();
    assert_eq!(b[0].message.seq, 3);
    assert!(b[0].message.msg_id > a[2].message.msg_id);
    let got = s2.sync("p_1_2", 0, 10).unwrap();
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(got[1].from_id, 2);
    let hist = s2.history("p_1_2", 3, 10).unwrap();
    assert_eq!(hist.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 1]);
    let newest = s2.history("p_1_2", 0, 2).unwrap();
    assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 2]);
    assert_eq!(
        s2.sync("p_1_2", 1, 1)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![2],
        "limit"
    );
    assert!(s2.sync("p_9_9", 0, 10).unwrap().is_empty());
}

fn client_msg_id_dedupes_within_and_across_batches(f: Fixture) {
    let s = &f.store;
    let a = s
        .append_batch(&[msg("p_1_2", 1, 2, Some("x")), msg("p_1_2", 1, 2, Some("x"))])
        .unwrap();
    assert!(!a[0].duplicate && a[1].duplicate);
    assert_eq!(a[0].message, a[1].message);
    let b = s
        .append_batch(&[msg("p_1_2", 1, 2, Some("x")), msg("p_1_2", 2, 1, Some("x"))])
        .unwrap();
    assert!(b[0].duplicate);
    assert_eq!(b[0].message, a[0].message);
    assert!(!b[1].duplicate, "another sender may use the same client id");
    assert_eq!(b[1].message.seq, 2);
    // After a restart too.
    let s2 = (f.reopen)();
    let c = s2.append_batch(&[msg("p_1_2", 1, 2, Some("x"))]).unwrap();
    assert!(c[0].duplicate);
    assert_eq!(c[0].message.msg_id, a[0].message.msg_id);
    assert_eq!(s2.sync("p_1_2", 0, 10).unwrap().len(), 2);
}

fn large_batches_with_duplicates_keep_order(f: Fixture) {
    let s = &f.store;
    // Over every multi-row chunk size, across three conversations, with repeats inside.
    let mut batch = Vec::new();
    for i in 0..700u64 {
        let conv = ["p_1_2", "p_1_3", "g_7"][(i % 3) as usize];
        let cmid = format!("c{}", i % 650);
        let mut m = msg(conv, 1, if conv == "g_7" { 7 } else { 2 }, Some(&cmid));
        if conv == "g_7" {
            m.chat_type = 1;
        }
        m.body = format!("\"m{i}\"");
        batch.push(m);
    }
    let out = s.append_batch(&batch).unwrap();
    assert_eq!(out.len(), 700);
    assert_eq!(out.iter().filter(|a| a.duplicate).count(), 50);
    for conv in ["p_1_2", "p_1_3", "g_7"] {
        let all = s.sync(conv, 0, 1000).unwrap();
        let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "{conv}");
    }
    let total: usize = ["p_1_2", "p_1_3", "g_7"]
        .iter()
        .map(|c| s.sync(c, 0, 1000).unwrap().len())
        .sum();
    assert_eq!(total, 650);
    for a in out.iter().filter(|a| !a.duplicate) {
        assert_eq!(
            s.message(a.message.msg_id).unwrap().as_ref(),
            Some(&a.message)
        );
    }
}

fn concurrent_appends_keep_seqs_unique_and_gap_free(f: Fixture) {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = f.store.clone();
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let batch: Vec<NewMessage> = (0..4u64)
                        .map(|k| msg("p_1_2", 1, 2, Some(&format!("t{t}-{i}-{k}"))))
                        .collect();
                    s.append_batch(&batch).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = f.store.sync("p_1_2", 0, 1000).unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<_>>()
    );
    let ids: HashSet<u64> = all.iter().map(|m| m.msg_id).collect();
    assert_eq!(ids.len(), 400);
}

fn conversations_and_read_cursors(f: Fixture) {
    let s = &f.store;
    let (u1, _) = s.upsert_app_user("a", &Profile::default(), true).unwrap();
    let (u2, _) = s.upsert_app_user("b", &Profile::default(), true).unwrap();
    let conv = format!("p_{}_{}", u1.uid, u2.uid);
    s.append_batch(&[
        msg(&conv, u1.uid, u2.uid, None),
        msg(&conv, u1.uid, u2.uid, None),
    ])
    .unwrap();
    let c2 = s.conversations(u2.uid, 10).unwrap();
    assert_eq!(c2.len(), 1);
    assert_eq!((c2[0].last_seq, c2[0].read_seq), (2, 0));
    assert_eq!(c2[0].last.as_ref().map(|m| m.seq), Some(2));
    let c1 = s.conversations(u1.uid, 10).unwrap();
    assert_eq!(c1[0].read_seq, 2, "the sender has read what they sent");
    assert_eq!(s.mark_read(u2.uid, &conv, 1).unwrap().read_seq, 1);
    assert_eq!(
        s.mark_read(u2.uid, &conv, 0).unwrap().read_seq,
        1,
        "never moves back"
    );
    assert_eq!(s.read_count(&conv, 1).unwrap(), 2);
    assert_eq!(s.read_count(&conv, 2).unwrap(), 1);

    // A newer conversation comes first; a group without messages is listed with chat_type 1.
    let g = s.create_group(u1.uid, "g", &[u2.uid], false).unwrap();
    let other = format!("p_{}_{}", u1.uid, u2.uid + 100);
    let mut later = msg(&other, u1.uid, u2.uid + 100, None);
    later.created_at = 50;
    s.append_batch(&[later]).unwrap();
    let list = s.conversations(u1.uid, 10).unwrap();
    assert_eq!(list[0].conv_id, other);
    let gconv = list
        .iter()
        .find(|c| c.conv_id == format!("g_{}", g.group_id))
        .expect("the group is listed");
    assert_eq!((gconv.chat_type, gconv.last_seq, gconv.read_seq), (1, 0, 0));
    assert!(gconv.last.is_none());
    assert_eq!(s.conversations(u1.uid, 1).unwrap().len(), 1, "limit");
}

fn read_cursors_stop_at_the_last_seq_and_say_when_they_move(f: Fixture) {
    let s = &f.store;
    let conv = "p_1_2";
    s.append_batch(&[msg(conv, 1, 2, None), msg(conv, 1, 2, None)])
        .unwrap();
    let seqs = |r: wxchat::store::ReadMark| (r.read_seq, r.moved);
    // Past the end: clamped to the last seq, so later messages still count as unread.
    assert_eq!(seqs(s.mark_read(2, conv, 999).unwrap()), (2, true));
    s.append_batch(&[msg(conv, 1, 2, None), msg(conv, 1, 2, None)])
        .unwrap();
    let c = s.conversations(2, 10).unwrap();
    assert_eq!((c[0].last_seq, c[0].read_seq), (4, 2), "two unread");
    // Repeated and backward reads move nothing.
    assert_eq!(seqs(s.mark_read(2, conv, 2).unwrap()), (2, false));
    assert_eq!(seqs(s.mark_read(2, conv, 1).unwrap()), (2, false));
    assert_eq!(seqs(s.mark_read(2, conv, 3).unwrap()), (3, true));
    assert_eq!(seqs(s.mark_read(2, conv, 50).unwrap()), (4, true));
    assert_eq!(seqs(s.mark_read(2, conv, 50).unwrap()), (4, false));
    // A conversation without messages: the cursor stays at 0.
    assert_eq!(seqs(s.mark_read(2, "p_2_3", 5).unwrap()), (0, false));
}

fn new_group_members_read_from_their_join(f: Fixture) {
    let s = &f.store;
    let closed = s.create_group(1, "closed", &[2], false).unwrap();
    let open = s.create_group(1, "open", &[2], true).unwrap();
    assert!(!closed.history_for_new_members);
    assert!(open.history_for_new_members);
    assert_eq!(s.group(open.group_id).unwrap(), Some(open.clone()));
    for g in [&closed, &open] {
        let batch: Vec<NewMessage> = (1..=3).map(|n| group_msg(g.group_id, 1, n)).collect();
        s.append_batch(&batch).unwrap();
        s.add_group_members(g.group_id, &[3]).unwrap();
        s.append_batch(&[group_msg(g.group_id, 3, 4)]).unwrap();
        // Re-adding a member keeps their join seq.
        s.add_group_members(g.group_id, &[3]).unwrap();
    }
    // Founders see everything; the newcomer of the closed group from seq 3 on; the open
    // group shows its history; strangers and unknown groups have no floor.
    assert_eq!(s.group_history_floor(closed.group_id, 1).unwrap(), 0);
    assert_eq!(s.group_history_floor(closed.group_id, 2).unwrap(), 0);
    assert_eq!(s.group_history_floor(closed.group_id, 3).unwrap(), 3);
    assert_eq!(s.group_history_floor(open.group_id, 3).unwrap(), 0);
    assert_eq!(s.group_history_floor(closed.group_id, 9).unwrap(), 0);
    assert_eq!(s.group_history_floor(999_999, 3).unwrap(), 0);
    // Leaving and coming back: the floor is the new join.
    s.remove_group_member(closed.group_id, 3).unwrap();
    s.append_batch(&[group_msg(closed.group_id, 1, 5)]).unwrap();
    s.add_group_members(closed.group_id, &[3]).unwrap();
    let s2 = (f.reopen)();
    assert_eq!(s2.group_history_floor(closed.group_id, 3).unwrap(), 5);
    // Listed without the message from before the join; the open group's is shown.
    let listed = s2.conversations(3, 10).unwrap();
    let last = |gid: u64| {
        listed
            .iter()
            .find(|c| c.conv_id == format!("g_{gid}"))
            .map(|c| (c.last_seq, c.last.as_ref().map(|m| m.seq)))
    };
    assert_eq!(last(closed.group_id), Some((5, None)));
    assert_eq!(last(open.group_id), Some((4, Some(4))));
    assert_eq!(
        s2.conversations(1, 10).unwrap()[0]
            .last
            .as_ref()
            .map(|m| m.seq),
        Some(5),
        "a founder sees it"
    );
    let listed: Vec<bool> = s2
        .groups_of(3)
        .unwrap()
        .iter()
        .map(|g| g.history_for_new_members)
        .collect();
    assert_eq!(listed, vec![false, true]);
}

fn idle_visitors_are_purged_in_batches(f: Fixture) {
    let s = &f.store;
    let (member, _) = s.upsert_app_user("m", &Profile::default(), true).unwrap();
    let old: Vec<u64> = (0..3).map(|_| s.create_visitor().unwrap().uid).collect();
    let talked = s.create_visitor().unwrap().uid;
    let waiting = s.create_visitor().unwrap().uid;
    let converted = s.create_visitor().unwrap().uid;
    s.convert_visitor(converted, member.uid).unwrap();
    // Every visitor so far was created before `cutoff`.
    let cutoff = wxchat::store::now_ms() + 1;
    let fresh = {
        // Created after the cutoff: its creation time is at least the cutoff's.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while wxchat::store::now_ms() < cutoff + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::thread::yield_now();
        }
        s.create_visitor().unwrap().uid
    };
    // `talked` wrote after the cutoff; `waiting` has an open session.
    let conv = format!("s_{talked}");
    let mut m = msg(&conv, talked, 0, None);
    m.chat_type = 2;
    m.created_at = cutoff + 10;
    s.append_batch(&[m]).unwrap();
    let mut old_msg = msg(&format!("s_{}", old[0]), old[0], 0, None);
    old_msg.chat_type = 2;
    s.append_batch(&[old_msg]).unwrap();
    s.open_service_session(waiting).unwrap();
    // One closed session of a purged visitor: kept.
    s.open_service_session(old[1]).unwrap();
    s.close_service_session(old[1]).unwrap();
    s.put_token(&[7u8; 32], old[2], i64::MAX).unwrap();

    let first = s.purge_idle_visitors(cutoff, 2).unwrap();
    let second = s.purge_idle_visitors(cutoff, 2).unwrap();
    assert_eq!(first.len(), 2, "a full batch");
    let mut purged: Vec<u64> = first.into_iter().chain(second).collect();
    purged.sort_unstable();
    assert_eq!(purged, old, "the idle visitors only");
    assert!(s.purge_idle_visitors(cutoff, 2).unwrap().is_empty());
    for uid in &old {
        assert_eq!(s.user(*uid).unwrap(), None);
    }
    assert!(s.sync(&format!("s_{}", old[0]), 0, 10).unwrap().is_empty());
    assert_eq!(s.token_user(&[7u8; 32], 0).unwrap(), None);
    for kept in [talked, waiting, converted, fresh, member.uid] {
        assert!(s.user(kept).unwrap().is_some(), "{kept} kept");
    }
    assert_eq!(s.sync(&conv, 0, 10).unwrap().len(), 1);
    assert_eq!(s.open_service_sessions().unwrap().len(), 1);
}

/// The purge may delete the newest message; its id is not handed out again, neither by the
/// running store nor after a restart (when numbering is read from the database afresh).
fn a_purged_message_id_is_not_handed_out_again(f: Fixture) {
    let s = &f.store;
    let (member, _) = s.upsert_app_user("m", &Profile::default(), true).unwrap();
    let earlier = s
        .append_batch(&[msg("p_a_b", member.uid, 2, None)])
        .unwrap();
    let visitor = s.create_visitor().unwrap().uid;
    let mut m = msg(&format!("s_{visitor}"), visitor, 0, None);
    m.chat_type = 2;
    let newest = s.append_batch(&[m]).unwrap()[0].message.msg_id;
    assert!(newest > earlier[0].message.msg_id);
    let cutoff = wxchat::store::now_ms() + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wxchat::store::now_ms() <= cutoff {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        std::thread::yield_now();
    }
    assert_eq!(s.purge_idle_visitors(cutoff, 10).unwrap(), vec![visitor]);
    assert_eq!(s.message(newest).unwrap(), None, "purged");

    let next = s
        .append_batch(&[msg("p_a_b", member.uid, 2, None)])
        .unwrap();
    assert!(
        next[0].message.msg_id > newest,
        "{} reused",
        next[0].message.msg_id
    );
    let s = (f.reopen)();
    let after_restart = s
        .append_batch(&[msg("p_a_b", member.uid, 2, None)])
        .unwrap();
    assert!(after_restart[0].message.msg_id > next[0].message.msg_id);
    // A purge with nothing newer to delete does not move numbering back.
    assert!(s.purge_idle_visitors(cutoff, 10).unwrap().is_empty());
    let last = s
        .append_batch(&[msg("p_a_b", member.uid, 2, None)])
        .unwrap();
    assert_eq!(last[0].message.msg_id, after_restart[0].message.msg_id + 1);
}

fn group_cursors_follow_membership(f: Fixture) {
    let s = &f.store;
    let g = s.create_group(1, "g", &[2, 3], false).unwrap();
    let conv = format!("g_{}", g.group_id);
    s.append_batch(&[group_msg(g.group_id, 1, 1), group_msg(g.group_id, 2, 2)])
        .unwrap();
    // The senders have read up to their own message; 3 has read nothing.
    assert_eq!(s.read_count(&conv, 1).unwrap(), 2);
    assert_eq!(s.read_count(&conv, 2).unwrap(), 1);
    // A member who joins later starts at the current end.
    s.add_group_members(g.group_id, &[4]).unwrap();
    let c4 = s.conversations(4, 10).unwrap();
    assert_eq!((c4[0].last_seq, c4[0].read_seq), (2, 2));
    s.remove_group_member(g.group_id, 3).unwrap();
    assert!(s.conversations(3, 10).unwrap().is_empty());
    assert_eq!(s.group_members(g.group_id).unwrap(), Some(vec![1, 2, 4]));
}

fn users_friends_groups(f: Fixture) {
    let s = &f.store;
    let p = Profile {
        name: Some("张三 😀".into()),
        head_img: Some("https://img/😀.png".into()),
        user_type: Some(1),
    };
    let (u, created) = s.upsert_app_user("app-1", &p, true).unwrap();
    assert!(created);
    assert_eq!(
        (u.name.as_str(), u.user_type, u.login_count),
        ("张三 😀", 1, 1)
    );
    assert_eq!(u.app_uid.as_deref(), Some("app-1"));
    let (again, created) = s
        .upsert_app_user("app-1", &Profile::default(), true)
        .unwrap();
    assert!(!created);
    assert_eq!(
        (
            again.uid,
            again.login_count,
            again.name.as_str(),
            again.head_img.as_str()
        ),
        (u.uid, 2, "张三 😀", "https://img/😀.png")
    );
    let (no_login, _) = s
        .upsert_app_user("app-1", &Profile::default(), false)
        .unwrap();
    assert_eq!(no_login.login_count, 2, "only logins count");
    assert_eq!(s.user(u.uid).unwrap(), Some(no_login.clone()));
    assert_eq!(s.user(u.uid + 1000).unwrap(), None);
    assert_eq!(
        s.existing_users(&[u.uid + 1000, u.uid]).unwrap(),
        vec![u.uid]
    );

    s.add_friendship(1, 2).unwrap();
    s.add_friendship(1, 2).unwrap();
    assert_eq!(s.friends(2).unwrap(), vec![1]);
    assert_eq!(s.friends(1).unwrap(), vec![2]);
    s.remove_friendship(2, 1).unwrap();
    assert!(s.friends(1).unwrap().is_empty());

    let g = s.create_group(1, "群 🎉", &[2, 3, 1], false).unwrap();
    assert_eq!(s.group(g.group_id).unwrap(), Some(g.clone()));
    assert_eq!(g.name, "群 🎉");
    assert_eq!(s.group_members(g.group_id).unwrap(), Some(vec![1, 2, 3]));
    s.remove_group_member(g.group_id, 2).unwrap();
    s.add_group_members(g.group_id, &[4, 4]).unwrap();
    assert_eq!(s.group_members(g.group_id).unwrap(), Some(vec![1, 3, 4]));
    assert_eq!(s.group_members(999_999).unwrap(), None);
    assert_eq!(s.group(999_999).unwrap(), None);
    assert_eq!(s.groups_of(4).unwrap(), vec![g.clone()]);
    assert_eq!(
        s.add_group_members(999_999, &[1]),
        Err(StoreError::NotFound("group"))
    );
}

fn friend_requests(f: Fixture) {
    let s = &f.store;
    s.add_friend_request(1, 2, "hi").unwrap();
    s.add_friend_request(3, 2, "").unwrap();
    s.add_friend_request(1, 2, "hello again 👋").unwrap();
    let reqs = s.friend_requests(2).unwrap();
    let mut froms: Vec<(u64, String)> = reqs.iter().map(|r| (r.0, r.1.clone())).collect();
    froms.sort();
    assert_eq!(
        froms,
        vec![(1, "hello again 👋".to_string()), (3, String::new())]
    );
    assert!(s.take_friend_request(1, 2).unwrap());
    assert!(!s.take_friend_request(1, 2).unwrap());
    // Accepting makes friends and clears requests in both directions.
    s.add_friend_request(2, 3, "").unwrap();
    s.add_friendship(3, 2).unwrap();
    assert!(s.friend_requests(2).unwrap().is_empty());
    assert!(s.friend_requests(3).unwrap().is_empty());
}

fn tokens_expire_and_are_revoked(f: Fixture) {
    let s = &f.store;
    let h1 = [1u8; 32];
    let h2 = [2u8; 32];
    s.put_token(&h2, 7, i64::MAX / 2).unwrap();
    s.put_token(&h1, 7, 1000).unwrap();
    assert_eq!(s.token_user(&h1, 999).unwrap(), Some(7));
    assert_eq!(s.token_user(&h1, 1000).unwrap(), None);
    s.delete_token(&h2).unwrap();
    assert_eq!(s.token_user(&h2, 0).unwrap(), None);
    // Issuing a token removes the user's expired ones (the table does not grow forever).
    s.put_token(&[3u8; 32], 7, i64::MAX / 2).unwrap();
    assert_eq!(s.token_user(&h1, 0).unwrap(), None);
    assert_eq!(s.token_user(&[3u8; 32], 5000).unwrap(), Some(7));
}

fn recall_blanks_the_body_only(f: Fixture) {
    let s = &f.store;
    let mut m = msg("p_1_2", 1, 2, None);
    m.body = r#"{"text":"秘密 🤫"}"#.into();
    let a = s.append_batch(&[m]).unwrap();
    let stored = s.message(a[0].message.msg_id).unwrap().unwrap();
    assert_eq!(stored.body, r#"{"text":"秘密 🤫"}"#);
    s.blank_message(stored.msg_id).unwrap();
    let after = s.message(stored.msg_id).unwrap().unwrap();
    assert_eq!(after.body, "null");
    assert_eq!((after.seq, after.from_id), (stored.seq, stored.from_id));
    assert_eq!(s.message(stored.msg_id + 999).unwrap(), None);
}

/// One module per backend, each with every test of the suite.
fn wechat_identities_merge_by_unionid(f: Fixture) {
    let s = &f.store;
    let id = |appid: &str, openid: &str, unionid: Option<&str>, sk: Option<&str>| WechatIdentity {
        appid: appid.into(),
        openid: openid.into(),
        unionid: unionid.map(String::from),
        session_key: sk.map(String::from),
    };
    // A mini-program user without a unionid: created once, then found.
    let (u1, created) = s
        .wechat_login(&id("wxmp", "o-1", None, Some("sk1")), true)
        .unwrap();
    assert!(created);
    let (again, created) = s
        .wechat_login(&id("wxmp", "o-1", None, Some("sk2")), true)
        .unwrap();
    assert!(!created);
    assert_eq!((again.uid, again.login_count), (u1.uid, 2));
    assert_eq!(
        s.wechat_session_key(u1.uid, "wxmp").unwrap().as_deref(),
        Some("sk2")
    );
    assert_eq!(s.wechat_session_key(u1.uid, "wxoa").unwrap(), None);
    // The same person through a mini-program and an official account: one user by unionid.
    let (x, created) = s
        .wechat_login(&id("wxmp", "o-2", Some("union-9"), Some("skx")), true)
        .unwrap();
    assert!(created);
    let (y, created) = s
        .wechat_login(&id("wxoa", "oa-2", Some("union-9"), None), true)
        .unwrap();
    assert!(!created);
    assert_eq!(y.uid, x.uid, "merged by unionid");
    assert_eq!(y.login_count, 2);
    // An official-account login keeps the mini-program's session key.
    assert_eq!(
        s.wechat_session_key(x.uid, "wxmp").unwrap().as_deref(),
        Some("skx")
    );
    // Same openid in another app is another identity.
    let (z, created) = s
        .wechat_login(&id("wxother", "o-1", None, None), true)
        .unwrap();
    assert!(created && z.uid != u1.uid);
    // A user who gets a unionid later is found by it afterwards.
    s.wechat_login(&id("wxmp", "o-1", Some("union-1"), None), true)
        .unwrap();
    let (w, created) = s
        .wechat_login(&id("wxoa", "oa-1", Some("union-1"), None), true)
        .unwrap();
    assert!(!created);
    assert_eq!(w.uid, u1.uid);
}

fn wechat_customers_and_their_reply_route(f: Fixture) {
    let s = &f.store;
    let id = WechatIdentity {
        appid: "wxmp".into(),
        openid: "o-cs".into(),
        unionid: None,
        session_key: None,
    };
    // Found or created without counting a login.
    let (u, created) = s.wechat_login(&id, false).unwrap();
    assert!(created);
    assert_eq!(u.login_count, 0);
    let (again, created) = s.wechat_login(&id, false).unwrap();
    assert_eq!((again.uid, created, again.login_count), (u.uid, false, 0));
    assert_eq!(s.cs_route(u.uid).unwrap(), None);
    s.set_cs_route(u.uid, "wxmp", "o-cs").unwrap();
    s.set_cs_route(u.uid, "wxgame", "o-cs2").unwrap();
    assert_eq!(
        s.cs_route(u.uid).unwrap(),
        Some(("wxgame".to_string(), "o-cs2".to_string())),
        "the latest contact wins"
    );
}

fn service_sessions_open_once_assign_close_and_rate(f: Fixture) {
    let s = &f.store;
    let a = s.open_service_session(7).unwrap();
    assert_eq!((a.customer, a.agent, a.closed_at), (7, None, None));
    // A second first message finds the same open session.
    assert_eq!(s.open_service_session(7).unwrap().id, a.id);
    let b = s.open_service_session(8).unwrap();
    s.assign_service_session(7, Some(100)).unwrap();
    let open = s.open_service_sessions().unwrap();
    assert_eq!(
        open.iter()
            .map(|x| (x.customer, x.agent))
            .collect::<Vec<_>>(),
        vec![(7, Some(100)), (8, None)],
        "oldest first"
    );
    assert!(open[0].assigned_at.is_some());
    // Back to the queue.
    s.assign_service_session(7, None).unwrap();
    assert_eq!(s.open_service_sessions().unwrap()[0].agent, None);
    assert_eq!(
        s.assign_service_session(9, Some(1)),
        Err(StoreError::NotFound("open service session"))
    );
    // Rating waits for the close, and happens once, by the customer.
    assert!(matches!(
        s.rate_service_session(a.id, 7, 5, ""),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.close_service_session(7).unwrap(), Some(a.id));
    assert_eq!(s.close_service_session(7).unwrap(), None);
    assert!(matches!(
        s.rate_service_session(a.id, 8, 5, ""),
        Err(StoreError::NotFound(_))
    ));
    s.rate_service_session(a.id, 7, 4, "很好 👍").unwrap();
    assert!(matches!(
        s.rate_service_session(a.id, 7, 1, ""),
        Err(StoreError::Conflict(_))
    ));
    // A new message after the close opens a new session.
    let c = s.open_service_session(7).unwrap();
    assert_ne!(c.id, a.id);
    assert_eq!(
        s.open_service_sessions()
            .unwrap()
            .iter()
            .map(|x| x.id)
            .collect::<Vec<_>>(),
        vec![b.id, c.id]
    );
}

fn visitors_convert_once_and_hand_over_their_sessions(f: Fixture) {
    let s = &f.store;
    let v = s.create_visitor().unwrap();
    assert_eq!(v.user_type, USER_TYPE_VISITOR);
    assert_eq!(v.app_uid, None);
    let w = s.create_visitor().unwrap();
    assert_ne!(v.uid, w.uid);
    let (u, _) = s
        .upsert_app_user("member", &Profile::default(), true)
        .unwrap();
    let (busy, _) = s
        .upsert_app_user("busy", &Profile::default(), true)
        .unwrap();
    // v: one closed and one open session, both move to u.
    let old = s.open_service_session(v.uid).unwrap();
    s.close_service_session(v.uid).unwrap();
    let open = s.open_service_session(v.uid).unwrap();
    s.assign_service_session(v.uid, Some(500)).unwrap();
    s.convert_visitor(v.uid, u.uid).unwrap();
    assert_eq!(
        s.user(v.uid).unwrap().unwrap().user_type,
        USER_TYPE_CONVERTED
    );
    let now_open = s.open_service_sessions().unwrap();
    assert_eq!(
        now_open
            .iter()
            .map(|x| (x.id, x.customer, x.agent))
            .collect::<Vec<_>>(),
        vec![(open.id, u.uid, Some(500))]
    );
    s.rate_service_session(old.id, u.uid, 5, "").unwrap();
    // Once only; not for registered users; unknown ids.
    assert!(matches!(
        s.convert_visitor(v.uid, u.uid),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.convert_visitor(u.uid, busy.uid),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.convert_visitor(987_654, u.uid),
        Err(StoreError::NotFound(_))
    ));
    // The registered user already has an open session: the visitor's one is closed.
    let theirs = s.open_service_session(busy.uid).unwrap();
    s.open_service_session(w.uid).unwrap();
    s.convert_visitor(w.uid, busy.uid).unwrap();
    let ids: Vec<(u64, u64)> = s
        .open_service_sessions()
        .unwrap()
        .iter()
        .map(|x| (x.id, x.customer))
        .collect();
    assert_eq!(ids, vec![(open.id, u.uid), (theirs.id, busy.uid)]);
}

fn consultations_run_down_by_deltas_extend_and_end(f: Fixture) {
    let s = &f.store;
    let c = s.create_consultation(1, 2, 60_000).unwrap();
    assert_eq!(
        (c.user, c.consultant, c.total_ms, c.remaining_ms, c.ended),
        (1, 2, 60_000, 60_000, false)
    );
    let other = s.create_consultation(3, 2, 10_000).unwrap();
    assert_eq!(
        s.active_consultations(2)
            .unwrap()
            .iter()
            .map(|x| x.id)
            .collect::<Vec<_>>(),
        vec![c.id, other.id]
    );
    assert_eq!(s.active_consultations(1).unwrap().len(), 1);
    assert!(s.active_consultations(9).unwrap().is_empty());
    s.use_consultation_time(&[(c.id, 5_000, false), (other.id, 4_000, false)])
        .unwrap();
    // An extension between two saves is kept: saves subtract, they do not overwrite.
    let e = s.extend_consultation(c.id, 30_000).unwrap();
    assert_eq!((e.total_ms, e.remaining_ms), (90_000, 85_000));
    s.use_consultation_time(&[(c.id, 1_000, false)]).unwrap();
    assert_eq!(s.consultation(c.id).unwrap().unwrap().remaining_ms, 84_000);
    // Used up: never below zero, ended, no longer active.
    s.use_consultation_time(&[(other.id, 99_000, true)])
        .unwrap();
    let o = s.consultation(other.id).unwrap().unwrap();
    assert_eq!((o.remaining_ms, o.ended), (0, true));
    assert_eq!(s.active_consultations(3).unwrap(), vec![]);
    // Extending an ended one makes it active again; it survives a reopen.
    s.extend_consultation(other.id, 7_000).unwrap();
    let s2 = (f.reopen)();
    let o = s2.consultation(other.id).unwrap().unwrap();
    assert_eq!(
        (o.remaining_ms, o.total_ms, o.ended),
        (7_000, 17_000, false)
    );
    assert_eq!(
        s2.extend_consultation(999_999, 1),
        Err(StoreError::NotFound("consultation"))
    );
    assert_eq!(s2.consultation(999_999).unwrap(), None);
}

fn consultations_end_on_demand_and_extend_again(f: Fixture) {
    let s = &f.store;
    let c = s.create_consultation(1, 2, 60_000).unwrap();
    s.use_consultation_time(&[(c.id, 5_000, false)]).unwrap();
    let e = s.end_consultation(c.id).unwrap();
    assert_eq!((e.remaining_ms, e.total_ms, e.ended), (0, 60_000, true));
    assert!(s.active_consultations(1).unwrap().is_empty());
    // Twice is the same; a save arriving afterwards leaves it at zero.
    assert_eq!(s.end_consultation(c.id).unwrap().remaining_ms, 0);
    s.use_consultation_time(&[(c.id, 1_000, false)]).unwrap();
    assert_eq!(s.consultation(c.id).unwrap().unwrap().remaining_ms, 0);
    let x = s.extend_consultation(c.id, 10_000).unwrap();
    assert_eq!((x.remaining_ms, x.ended), (10_000, false));
    assert_eq!(
        s.end_consultation(999_999),
        Err(StoreError::NotFound("consultation"))
    );
}

/// Many first logins of different users at once (a morning rush, a cluster's nodes creating
/// users in parallel) all succeed: each creates its user, none fails with a deadlock; and first
/// logins of one user racing each other end with one user.
fn concurrent_first_logins_all_succeed(f: Fixture) {
    use wxchat::store::User;
    const THREADS: usize = 8;
    const ROUNDS: usize = 6;
    type Login =
        Box<dyn Fn(&dyn Store, usize, usize) -> Result<(User, bool), StoreError> + Send + Sync>;
    let kinds: Vec<(&str, Login)> = vec![
        (
            "app",
            Box::new(|s: &dyn Store, r: usize, t: usize| {
                s.upsert_app_user(&format!("rush-{r}-{t}"), &Profile::default(), true)
            }),
        ),
        (
            "wechat",
            Box::new(|s: &dyn Store, r: usize, t: usize| {
                let id = WechatIdentity {
                    appid: "wxrush".into(),
                    openid: format!("o-{r}-{t}"),
                    unionid: Some(format!("u-{r}-{t}")),
                    session_key: None,
                };
                s.wechat_login(&id, true)
            }),
        ),
        (
            "same app_uid",
            Box::new(|s: &dyn Store, r: usize, _t: usize| {
                s.upsert_app_user(&format!("same-{r}"), &Profile::default(), true)
            }),
        ),
    ];
    for (kind, login) in kinds {
        let login = Arc::new(login);
        for round in 0..ROUNDS {
            let barrier = Arc::new(std::sync::Barrier::new(THREADS));
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (s, barrier, login) = (f.store.clone(), barrier.clone(), login.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        login(&*s, round, t)
                    })
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let users: Vec<(User, bool)> = results
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("{kind} login, round {round}: {e:?}")))
                .collect();
            let uids: HashSet<u64> = users.iter().map(|(u, _)| u.uid).collect();
            let created = users.iter().filter(|(_, c)| *c).count();
            if kind == "same app_uid" {
                assert_eq!(
                    (uids.len(), created),
                    (1, 1),
                    "{kind}: one user, created once"
                );
            } else {
                assert_eq!(
                    (uids.len(), created),
                    (THREADS, THREADS),
                    "{kind}: every user created"
                );
            }
        }
    }
}

/// New users logging in at once each get a token: issuing one (which also clears the user's
/// expired tokens) must not deadlock with another new user's (MySQL: a DELETE that finds
/// nothing locked the index gap both inserts went into).
fn concurrent_tokens_for_new_users_all_succeed(f: Fixture) {
    const THREADS: usize = 8;
    for round in 0..6 {
        let uids: Vec<u64> = (0..THREADS)
            .map(|t| {
                let name = format!("tok-{round}-{t}");
                f.store
                    .upsert_app_user(&name, &Profile::default(), false)
                    .unwrap()
                    .0
                    .uid
            })
            .collect();
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = uids
            .iter()
            .enumerate()
            .map(|(t, &uid)| {
                let (s, barrier) = (f.store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let hash = [round as u8 * 16 + t as u8 + 1; 32];
                    s.put_token(&hash, uid, i64::MAX / 2).map(|_| hash)
                })
            })
            .collect();
        for (t, th) in threads.into_iter().enumerate() {
            let hash = th
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}, user {t}: {e:?}"));
            assert_eq!(f.store.token_user(&hash, 0).unwrap(), Some(uids[t]));
        }
    }
}

macro_rules! suite {
    ([$($backend:ident),*] $tests:tt) => {
        $( suite!(@one $backend $tests); )*
    };
    (@one $backend:ident [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $test() {
                    super::$test(super::$backend());
                }
            )*
        }
    };
}

suite!([sqlite, sqlite_logged, mysql] [
    seqs_start_at_one_and_have_no_gaps_across_batches_and_reopen,
    client_msg_id_dedupes_within_and_across_batches,
    large_batches_with_duplicates_keep_order,
    concurrent_appends_keep_seqs_unique_and_gap_free,
    conversations_and_read_cursors,
    read_cursors_stop_at_the_last_seq_and_say_when_they_move,
    new_group_members_read_from_their_join,
    idle_visitors_are_purged_in_batches,
    a_purged_message_id_is_not_handed_out_again,
    group_cursors_follow_membership,
    users_friends_groups,
    friend_requests,
    tokens_expire_and_are_revoked,
    recall_blanks_the_body_only,
    wechat_identities_merge_by_unionid,
    wechat_customers_and_their_reply_route,
    service_sessions_open_once_assign_close_and_rate,
    visitors_convert_once_and_hand_over_their_sessions,
    consultations_run_down_by_deltas_extend_and_end,
    consultations_end_on_demand_and_extend_again,
    concurrent_first_logins_all_succeed,
    concurrent_tokens_for_new_users_all_succeed,
]);
