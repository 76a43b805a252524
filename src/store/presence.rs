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
    /// uid -> node -> lapses at.
    users: Mutex<HashMap<u64, Vec<(String, Instant)>>>,
}

impl MemoryPresence {
    pub fn new(ttl: Duration) -> MemoryPresence {
        MemoryPresence {
            ttl,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<(String, Instant)>>> {
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
        for &uid in uids {
            let nodes = users.entry(uid).or_default();
            match nodes.iter_mut().find(|(n, _)| n == node) {
                Some(entry) => entry.1 = until,
                None => nodes.push((node.to_string(), until)),
            }
        }
        Ok(())
    }

    fn set_offline(&self, node: &str, uid: u64) -> StoreResult<()> {
        let mut users = self.users();
        if let Some(nodes) = users.get_mut(&uid) {
            nodes.retain(|(n, _)| n != node);
            if nodes.is_empty() {
                users.remove(&uid);
            }
        }
        Ok(())
    }

    fn online(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        let now = Instant::now();
        let mut users = self.users();
        let mut out = Vec::new();
        for &uid in uids {
            if let Some(nodes) = users.get_mut(&uid) {
                nodes.retain(|(_, until)| *until > now);
                if nodes.is_empty() {
                    users.remove(&uid);
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
        let users = self
            .users()
            .values()
            .filter(|nodes| nodes.iter().any(|(n, until)| n == node && *until > now))
            .count() as u64;
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
            .filter_map(|uid| users.get(uid))
            .flatten()
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n.clone())
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
