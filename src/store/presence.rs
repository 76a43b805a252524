//! Presence: which users are online on any wxchat process. Each process (node) reports the users
//! it holds connections for and refreshes them every `ttl / 3`; an entry not refreshed within the
//! TTL lapses, so the users of a crashed node go offline by themselves. The in-process
//! implementation serves the embedded deployment; `store::redis` shares it between nodes.

use super::StoreResult;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub trait Presence: Send + Sync + 'static {
    /// True when calls never block (in-process), so the reactor may make them directly.
    fn is_local(&self) -> bool;
    /// Marks these users online on `node` (also the periodic refresh).
    fn set_online(&self, node: &str, uids: &[u64]) -> StoreResult<()>;
    /// The user has no connection left on `node`.
    fn set_offline(&self, node: &str, uid: u64) -> StoreResult<()>;
    /// The subset of `uids` online on any node, in the input order.
    fn online(&self, uids: &[u64]) -> StoreResult<Vec<u64>>;
    /// Every user of `node` goes offline (a clean shutdown).
    fn clear_node(&self, node: &str, uids: &[u64]) -> StoreResult<()>;
    /// The nodes holding a connection of any of `uids` (each once, sorted): where the bus
    /// routes a push for them.
    fn nodes_of(&self, uids: &[u64]) -> StoreResult<Vec<String>>;
    /// The nodes of each of `uids` (each list sorted), in the input order: one round trip for a
    /// batch of pushes to route.
    fn nodes_by_user(&self, uids: &[u64]) -> StoreResult<Vec<Vec<String>>> {
        uids.iter().map(|u| self.nodes_of(&[*u])).collect()
    }
    /// Publishes this node's figures (its `connections`; its users come from `set_online`),
    /// valid for `ttl` (a node that stops reporting drops out of the totals), and returns the
    /// cluster's: every live node's figures and the distinct users online anywhere.
    fn report(&self, node: &str, connections: u64, ttl: Duration) -> StoreResult<ClusterFigures>;
}

/// The cluster's figures, as `report` returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Nodes that reported within their time-to-live (this one included).
    pub nodes: Vec<NodeFigures>,
    /// Distinct users with a connection on any node (a user on two nodes counts once).
    pub users_online: u64,
}

impl ClusterFigures {
    /// Open connections on every node.
    pub fn connections(&self) -> u64 {
        self.nodes.iter().map(|n| n.connections).sum()
    }
}

/// One node's share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFigures {
    pub node: String,
    pub connections: u64,
    pub users_online: u64,
}

/// Presence in this process's memory.
pub struct MemoryPresence {
    ttl: Duration,
    users: Mutex<Users>,
}

#[derive(Default)]
struct Users {
    /// Node names, named by their index below (one process has one).
    nodes: Vec<String>,
    /// uid -> node -> lapses at.
    by_uid: HashMap<u64, Lapses>,
}

impl Users {
    fn node_index(&mut self, node: &str) -> u32 {
        match self.nodes.iter().position(|n| n == node) {
            Some(i) => i as u32,
            None => {
                self.nodes.push(node.to_string());
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn known(&self, node: &str) -> Option<u32> {
        self.nodes.iter().position(|n| n == node).map(|i| i as u32)
    }
}

/// Where one user is online and until when: the one node of an embedded deployment inline
/// (no allocation per user), more in a list.
enum Lapses {
    One([(u32, Instant); 1]),
    Many(Vec<(u32, Instant)>),
}

impl Lapses {
    fn entries(&self) -> &[(u32, Instant)] {
        match self {
            Lapses::One(one) => one,
            Lapses::Many(v) => v,
        }
    }

    fn set(&mut self, node: u32, until: Instant) {
        let entries = match self {
            Lapses::One(one) => &mut one[..],
            Lapses::Many(v) => &mut v[..],
        };
        if let Some(e) = entries.iter_mut().find(|(n, _)| *n == node) {
            e.1 = until;
            return;
        }
        let mut v = self.entries().to_vec();
        v.push((node, until));
        *self = Lapses::Many(v);
    }

    /// Keeps the entries `keep` accepts; false when none is left.
    fn retain(&mut self, mut keep: impl FnMut(&(u32, Instant)) -> bool) -> bool {
        match self {
            Lapses::One([e]) => keep(e),
            Lapses::Many(v) => {
                v.retain(keep);
                if let [one] = v[..] {
                    *self = Lapses::One([one]);
                }
                !self.entries().is_empty()
            }
        }
    }
}

impl MemoryPresence {
    pub fn new(ttl: Duration) -> MemoryPresence {
        MemoryPresence {
            ttl,
            users: Mutex::new(Users::default()),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        match self.users.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Presence for MemoryPresence {
    fn is_local(&self) -> bool {
        true
    }

    fn set_online(&self, node: &str, uids: &[u64]) -> StoreResult<()> {
        let until = Instant::now() + self.ttl;
        let mut users = self.users();
        let node = users.node_index(node);
        for &uid in uids {
            match users.by_uid.get_mut(&uid) {
                Some(l) => l.set(node, until),
                None => {
                    users.by_uid.insert(uid, Lapses::One([(node, until)]));
                }
            }
        }
        Ok(())
    }

    fn set_offline(&self, node: &str, uid: u64) -> StoreResult<()> {
        let mut users = self.users();
        let Some(node) = users.known(node) else {
            return Ok(());
        };
        if let Some(l) = users.by_uid.get_mut(&uid) {
            if !l.retain(|(n, _)| *n != node) {
                users.by_uid.remove(&uid);
            }
        }
        Ok(())
    }

    fn online(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        let now = Instant::now();
        let mut users = self.users();
        let mut out = Vec::new();
        for &uid in uids {
            if let Some(l) = users.by_uid.get_mut(&uid) {
                if !l.retain(|(_, until)| *until > now) {
                    users.by_uid.remove(&uid);
                } else if !out.contains(&uid) {
                    out.push(uid);
                }
            }
        }
        Ok(out)
    }

    fn clear_node(&self, node: &str, uids: &[u64]) -> StoreResult<()> {
        for &uid in uids {
            self.set_offline(node, uid)?;
        }
        Ok(())
    }

    /// One process: the cluster is this node.
    fn report(&self, node: &str, connections: u64, _ttl: Duration) -> StoreResult<ClusterFigures> {
        let now = Instant::now();
        let users = {
            let users = self.users();
            match users.known(node) {
                Some(i) => users
                    .by_uid
                    .values()
                    .filter(|l| l.entries().iter().any(|(n, until)| *n == i && *until > now))
                    .count() as u64,
                None => 0,
            }
        };
        Ok(ClusterFigures {
            nodes: vec![NodeFigures {
                node: node.to_string(),
                connections,
                users_online: users,
            }],
            users_online: users,
        })
    }

    fn nodes_of(&self, uids: &[u64]) -> StoreResult<Vec<String>> {
        let now = Instant::now();
        let users = self.users();
        let mut out: Vec<String> = uids
            .iter()
            .filter_map(|uid| users.by_uid.get(uid))
            .flat_map(|l| l.entries())
            .filter(|(_, until)| *until > now)
            .filter_map(|(n, _)| users.nodes.get(*n as usize).cloned())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_of_lists_each_live_node_once() {
        let p = MemoryPresence::new(Duration::from_secs(60));
        p.set_online("b", &[1, 2]).unwrap();
        p.set_online("a", &[2]).unwrap();
        p.set_online("c", &[3]).unwrap();
        assert_eq!(p.nodes_of(&[1, 2]).unwrap(), vec!["a", "b"]);
        assert_eq!(p.nodes_of(&[9]).unwrap(), Vec::<String>::new());
        p.set_offline("b", 1).unwrap();
        assert_eq!(p.nodes_of(&[1]).unwrap(), Vec::<String>::new());
    }
}
