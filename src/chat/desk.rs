//! The customer-service desk, pure: which agent serves which customer, who waits in the queue
//! and at which position. No I/O and no clock of its own: the hub feeds it events (a customer
//! writes, an agent connects, goes away, disconnects, transfers, closes; time passes) and carries
//! out the [`Effect`]s it returns (persist the session change, push notices).
//!
//! Rules:
//! - A customer's first message opens a session, assigned to the available agent with the fewest
//!   open sessions below their maximum (ties: the one who has waited longest since their last
//!   assignment, then the lowest uid), or queued.
//! - Whenever capacity appears (an agent comes online or back, a session closes or moves), the
//!   queue drains in order. Every customer whose position changed is told the new one.
//! - An agent who disconnects keeps their sessions for a grace period; past it, the sessions go
//!   back to the front of the queue, oldest first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Whether an agent takes new customers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStatus {
    Available,
    /// Connected, serving their open sessions, taking no new ones.
    Away,
    /// Disconnected at this moment; sessions kept until the grace period ends.
    Gone(Instant),
}

#[derive(Clone, Debug)]
struct Agent {
    max_sessions: usize,
    status: AgentStatus,
    customers: BTreeSet<u64>,
    /// Tie-breaker: agents idle longest get the next customer.
    last_assigned: u64,
}

/// Something the hub must carry out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The customer is now served by `agent` (a new session, a queued one, a transfer or a
    /// re-queued one); `from` is the previous agent of a transfer.
    Assigned {
        customer: u64,
        agent: u64,
        from: Option<u64>,
    },
    /// The customer waits at this 1-based position.
    Queued { customer: u64, position: usize },
    /// The customer's session went back to the queue (its agent was gone too long).
    Requeued { customer: u64, agent: u64 },
    /// The session ended.
    Closed { customer: u64, agent: Option<u64> },
}

/// Why a desk request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeskError {
    NoSession,
    NotYourCustomer,
    NoSuchAgent,
    AgentUnavailable,
}

impl std::fmt::Display for DeskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeskError::NoSession => "no open service session for this customer",
            DeskError::NotYourCustomer => "this customer is served by another agent",
            DeskError::NoSuchAgent => "no such agent online",
            DeskError::AgentUnavailable => "that agent takes no new customers now",
        })
    }
}

#[derive(Default)]
pub struct Desk {
    agents: BTreeMap<u64, Agent>,
    /// Customers waiting, in order.
    queue: VecDeque<u64>,
    /// Open sessions: customer -> agent (None while queued).
    sessions: HashMap<u64, Option<u64>>,
    assignments: u64,
}

impl Desk {
    pub fn new() -> Desk {
        Desk::default()
    }

    /// The agent serving `customer`, if any; Some(None) while queued.
    /// Who gets a service conversation's messages: the customer and the agent serving them.
    pub fn recipients(&self, customer: u64) -> Vec<u64> {
        match self.session(customer).flatten() {
            Some(agent) if agent != customer => vec![customer, agent],
            _ => vec![customer],
        }
    }

    pub fn session(&self, customer: u64) -> Option<Option<u64>> {
        self.sessions.get(&customer).copied()
    }

    /// 1-based queue position.
    pub fn position(&self, customer: u64) -> Option<usize> {
        self.queue
            .iter()
            .position(|c| *c == customer)
            .map(|i| i + 1)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// The first `limit` waiting customers, in order.
    pub fn waiting(&self, limit: usize) -> Vec<u64> {
        self.queue.iter().take(limit).copied().collect()
    }

    /// A connected agent's status (None when unknown or gone).
    pub fn agent_status(&self, agent: u64) -> Option<AgentStatus> {
        self.agents.get(&agent).map(|a| a.status)
    }

    /// A visitor became a registered user: their session (queued or assigned) now belongs to
    /// `new`. When `new` already has a session, the visitor's is closed instead.
    pub fn rekey(&mut self, old: u64, new: u64) -> Vec<Effect> {
        let Some(agent) = self.sessions.get(&old).copied() else {
            return Vec::new();
        };
        if self.sessions.contains_key(&new) {
            return self.close(old, None).unwrap_or_default();
        }
        self.sessions.remove(&old);
        self.sessions.insert(new, agent);
        for c in self.queue.iter_mut().filter(|c| **c == old) {
            *c = new;
        }
        if let Some(a) = agent.and_then(|a| self.agents.get_mut(&a)) {
            a.customers.remove(&old);
            a.customers.insert(new);
        }
        Vec::new()
    }

    /// Customers an agent serves.
    pub fn customers_of(&self, agent: u64) -> Vec<u64> {
        self.agents
            .get(&agent)
            .map(|a| a.customers.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Restores a session loaded from storage (at start): assigned to `agent`, or queued in the
    /// order of the calls. The agent is known but gone until they connect (the grace period runs
    /// from `now`).
    pub fn restore(&mut self, customer: u64, agent: Option<u64>, now: Instant) {
        match agent {
            Some(a) => {
                let entry = self.agents.entry(a).or_insert(Agent {
                    max_sessions: 0,
                    status: AgentStatus::Gone(now),
                    customers: BTreeSet::new(),
                    last_assigned: 0,
                });
                entry.customers.insert(customer);
                self.sessions.insert(customer, Some(a));
            }
            None => {
                self.sessions.insert(customer, None);
                self.queue.push_back(customer);
            }
        }
    }

    /// A customer wrote. A new session when they had none (assigned or queued); nothing
    /// otherwise.
    pub fn customer_message(&mut self, customer: u64) -> Vec<Effect> {
        if self.sessions.contains_key(&customer) {
            return Vec::new();
        }
        self.sessions.insert(customer, None);
        let before = self.positions();
        self.queue.push_back(customer);
        let mut out = Vec::new();
        self.drain(&mut out);
        self.report_moves(&before, &mut out);
        out
    }

    /// An agent connected (or changed their capacity).
    pub fn agent_online(&mut self, agent: u64, max_sessions: usize) -> Vec<Effect> {
        let a = self.agents.entry(agent).or_insert(Agent {
            max_sessions,
            status: AgentStatus::Available,
            customers: BTreeSet::new(),
            last_assigned: 0,
        });
        a.max_sessions = max_sessions;
        if let AgentStatus::Gone(_) = a.status {
            a.status = AgentStatus::Available;
        }
        self.settle()
    }

    /// Available or away (connected agents only).
    pub fn set_status(&mut self, agent: u64, available: bool) -> Result<Vec<Effect>, DeskError> {
        let a = self.agents.get_mut(&agent).ok_or(DeskError::NoSuchAgent)?;
        if let AgentStatus::Gone(_) = a.status {
            return Err(DeskError::NoSuchAgent);
        }
        a.status = if available {
            AgentStatus::Available
        } else {
            AgentStatus::Away
        };
        Ok(if available { self.settle() } else { Vec::new() })
    }

    /// The agent's last connection closed: their sessions wait for the grace period.
    pub fn agent_gone(&mut self, agent: u64, now: Instant) {
        if let Some(a) = self.agents.get_mut(&agent) {
            a.status = AgentStatus::Gone(now);
        }
    }

    /// Time passed: agents gone longer than `grace` lose their sessions to the queue front.
    pub fn tick(&mut self, now: Instant, grace: Duration) -> Vec<Effect> {
        let expired: Vec<u64> = self
            .agents
            .iter()
            .filter(|(_, a)| matches!(a.status, AgentStatus::Gone(t) if now >= t + grace))
            .map(|(uid, _)| *uid)
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        let before = self.positions();
        let mut out = Vec::new();
        // Re-queued sessions go first, in customer order, ahead of everyone already waiting.
        let mut front = Vec::new();
        for uid in expired {
            if let Some(a) = self.agents.remove(&uid) {
                for c in a.customers {
                    self.sessions.insert(c, None);
                    out.push(Effect::Requeued {
                        customer: c,
                        agent: uid,
                    });
                    front.push(c);
                }
            }
        }
        for c in front.into_iter().rev() {
            self.queue.push_front(c);
        }
        self.drain(&mut out);
        self.report_moves(&before, &mut out);
        out
    }

    /// Closes the customer's session (by its agent, the customer, or the system when `by` is
    /// None).
    pub fn close(
        &mut self,
        customer: u64,
        by_agent: Option<u64>,
    ) -> Result<Vec<Effect>, DeskError> {
        let agent = *self.sessions.get(&customer).ok_or(DeskError::NoSession)?;
        if let Some(by) = by_agent {
            if agent != Some(by) {
                return Err(DeskError::NotYourCustomer);
            }
        }
        let before = self.positions();
        self.sessions.remove(&customer);
        self.queue.retain(|c| *c != customer);
        if let Some(a) = agent.and_then(|a| self.agents.get_mut(&a)) {
            a.customers.remove(&customer);
        }
        let mut out = vec![Effect::Closed { customer, agent }];
        self.drain(&mut out);
        self.report_moves(&before, &mut out);
        Ok(out)
    }

    /// Moves a customer from `from` (their agent) to `to` (connected, not away; may exceed
    /// their maximum, since a colleague asked).
    pub fn transfer(
        &mut self,
        customer: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<Effect>, DeskError> {
        if self.sessions.get(&customer) != Some(&Some(from)) {
            return Err(if self.sessions.contains_key(&customer) {
                DeskError::NotYourCustomer
            } else {
                DeskError::NoSession
            });
        }
        match self.agents.get(&to).map(|a| a.status) {
            None | Some(AgentStatus::Gone(_)) => return Err(DeskError::NoSuchAgent),
            Some(AgentStatus::Away) => return Err(DeskError::AgentUnavailable),
            Some(AgentStatus::Available) => {}
        }
        if let Some(a) = self.agents.get_mut(&from) {
            a.customers.remove(&customer);
        }
        self.give(customer, to);
        let mut out = vec![Effect::Assigned {
            customer,
            agent: to,
            from: Some(from),
        }];
        // The sender freed a place.
        let before = self.positions();
        self.drain(&mut out);
        self.report_moves(&before, &mut out);
        Ok(out)
    }

    /// An agent takes a specific waiting customer out of the queue.
    pub fn accept(&mut self, agent: u64, customer: u64) -> Result<Vec<Effect>, DeskError> {
        match self.agents.get(&agent).map(|a| a.status) {
            None | Some(AgentStatus::Gone(_)) => return Err(DeskError::NoSuchAgent),
            _ => {}
        }
        if self.sessions.get(&customer) != Some(&None) {
            return Err(DeskError::NoSession);
        }
        let before = self.positions();
        self.queue.retain(|c| *c != customer);
        self.give(customer, agent);
        let mut out = vec![Effect::Assigned {
            customer,
            agent,
            from: None,
        }];
        self.report_moves(&before, &mut out);
        Ok(out)
    }

    fn give(&mut self, customer: u64, agent: u64) {
        self.assignments += 1;
        if let Some(a) = self.agents.get_mut(&agent) {
            a.customers.insert(customer);
            a.last_assigned = self.assignments;
        }
        self.sessions.insert(customer, Some(agent));
    }

    fn settle(&mut self) -> Vec<Effect> {
        let before = self.positions();
        let mut out = Vec::new();
        self.drain(&mut out);
        self.report_moves(&before, &mut out);
        out
    }

    /// The available agent with room and the fewest sessions.
    fn least_loaded(&self) -> Option<u64> {
        self.agents
            .iter()
            .filter(|(_, a)| {
                a.status == AgentStatus::Available && a.customers.len() < a.max_sessions
            })
            .min_by_key(|(uid, a)| (a.customers.len(), a.last_assigned, **uid))
            .map(|(uid, _)| *uid)
    }

    fn drain(&mut self, out: &mut Vec<Effect>) {
        while !self.queue.is_empty() {
            let Some(agent) = self.least_loaded() else {
                break;
            };
            let customer = self.queue.pop_front().expect("not empty");
            self.give(customer, agent);
            out.push(Effect::Assigned {
                customer,
                agent,
                from: None,
            });
        }
    }

    fn positions(&self) -> HashMap<u64, usize> {
        self.queue
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i + 1))
            .collect()
    }

    /// A `Queued` effect for everyone whose position is new or changed.
    fn report_moves(&self, before: &HashMap<u64, usize>, out: &mut Vec<Effect>) {
        for (i, c) in self.queue.iter().enumerate() {
            if before.get(c) != Some(&(i + 1)) {
                out.push(Effect::Queued {
                    customer: *c,
                    position: i + 1,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(customer: u64, agent: u64) -> Effect {
        Effect::Assigned {
            customer,
            agent,
            from: None,
        }
    }

    #[test]
    fn least_loaded_agent_then_queue_with_positions() {
        let mut d = Desk::new();
        assert!(d.agent_online(100, 2).is_empty());
        assert!(d.agent_online(200, 2).is_empty());
        assert_eq!(d.customer_message(1), vec![assigned(1, 100)]);
        // 100 has one session, 200 none: 200 is least loaded.
        assert_eq!(d.customer_message(2), vec![assigned(2, 200)]);
        // Equal load: the agent idle longest (100) gets the next one.
        assert_eq!(d.customer_message(3), vec![assigned(3, 100)]);
        assert_eq!(d.customer_message(4), vec![assigned(4, 200)]);
        assert!(
            d.customer_message(4).is_empty(),
            "an open session: nothing new"
        );
        // Everyone is full: the queue, with positions.
        assert_eq!(
            d.customer_message(5),
            vec![Effect::Queued {
                customer: 5,
                position: 1
            }]
        );
        assert_eq!(
            d.customer_message(6),
            vec![Effect::Queued {
                customer: 6,
                position: 2
            }]
        );
        assert_eq!(d.session(6), Some(None));
        // A close frees a place: the first in line is served, the second moves up.
        assert_eq!(
            d.close(2, Some(200)).unwrap(),
            vec![
                Effect::Closed {
                    customer: 2,
                    agent: Some(200)
                },
                assigned(5, 200),
                Effect::Queued {
                    customer: 6,
                    position: 1
                },
            ]
        );
        assert_eq!(d.close(1, Some(200)), Err(DeskError::NotYourCustomer));
        assert_eq!(d.close(99, None), Err(DeskError::NoSession));
        // A queued customer may leave.
        assert_eq!(
            d.close(6, None).unwrap(),
            vec![Effect::Closed {
                customer: 6,
                agent: None
            }]
        );
        assert_eq!(d.queue_len(), 0);
    }

    #[test]
    fn away_agents_take_no_one_and_coming_back_drains_the_queue() {
        let mut d = Desk::new();
        d.agent_online(100, 1);
        d.set_status(100, false).unwrap();
        assert_eq!(
            d.customer_message(1),
            vec![Effect::Queued {
                customer: 1,
                position: 1
            }]
        );
        d.customer_message(2);
        assert_eq!(
            d.set_status(100, true).unwrap(),
            vec![
                assigned(1, 100),
                Effect::Queued {
                    customer: 2,
                    position: 1
                }
            ]
        );
        // A second agent connecting takes the next.
        assert_eq!(d.agent_online(200, 5), vec![assigned(2, 200)]);
        assert_eq!(d.set_status(300, true), Err(DeskError::NoSuchAgent));
    }

    #[test]
    fn transfer_and_accept() {
        let mut d = Desk::new();
        d.agent_online(100, 1);
        d.agent_online(200, 1);
        d.customer_message(1); // -> 100
        d.customer_message(2); // -> 200
        d.customer_message(3); // queued
                               // 100 hands customer 1 to 200 (over 200's maximum: a colleague asked), and takes 3.
        assert_eq!(
            d.transfer(1, 100, 200).unwrap(),
            vec![
                Effect::Assigned {
                    customer: 1,
                    agent: 200,
                    from: Some(100)
                },
                assigned(3, 100),
            ]
        );
        assert_eq!(d.customers_of(200), vec![1, 2]);
        assert_eq!(d.transfer(1, 100, 200), Err(DeskError::NotYourCustomer));
        assert_eq!(d.transfer(9, 100, 200), Err(DeskError::NoSession));
        assert_eq!(d.transfer(1, 200, 999), Err(DeskError::NoSuchAgent));
        d.set_status(100, false).unwrap();
        assert_eq!(d.transfer(1, 200, 100), Err(DeskError::AgentUnavailable));
        // Accept: an agent picks a waiting customer out of the line.
        d.customer_message(4);
        d.customer_message(5);
        assert_eq!(
            d.accept(100, 5).unwrap(),
            vec![assigned(5, 100)],
            "4 keeps position 1"
        );
        assert_eq!(d.position(4), Some(1));
        assert_eq!(d.accept(100, 5), Err(DeskError::NoSession));
    }

    #[test]
    fn a_gone_agent_keeps_sessions_for_the_grace_then_they_requeue_first() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut d = Desk::new();
        d.agent_online(100, 2);
        d.customer_message(1);
        d.customer_message(2);
        d.agent_online(200, 0); // connected but no capacity
        d.customer_message(3); // queued at 1
        d.agent_gone(100, t0);
        assert!(d.tick(t0 + Duration::from_secs(29), grace).is_empty());
        // Back within the grace: nothing changes.
        assert!(d.agent_online(100, 2).is_empty());
        assert_eq!(d.session(1), Some(Some(100)));
        d.agent_gone(100, t0 + Duration::from_secs(40));
        let out = d.tick(t0 + Duration::from_secs(71), grace);
        assert_eq!(
            out,
            vec![
                Effect::Requeued {
                    customer: 1,
                    agent: 100
                },
                Effect::Requeued {
                    customer: 2,
                    agent: 100
                },
                Effect::Queued {
                    customer: 1,
                    position: 1
                },
                Effect::Queued {
                    customer: 2,
                    position: 2
                },
                Effect::Queued {
                    customer: 3,
                    position: 3
                },
            ]
        );
        // Capacity appears: the re-queued customers are served first.
        assert_eq!(
            d.agent_online(200, 1),
            vec![
                assigned(1, 200),
                Effect::Queued {
                    customer: 2,
                    position: 1
                },
                Effect::Queued {
                    customer: 3,
                    position: 2
                },
            ]
        );
    }

    #[test]
    fn restored_sessions_wait_for_their_agent() {
        let t0 = Instant::now();
        let mut d = Desk::new();
        d.restore(1, Some(100), t0);
        d.restore(2, None, t0);
        d.restore(3, None, t0);
        assert_eq!(d.position(3), Some(2));
        // The agent reconnects: keeps customer 1 and takes the first in line.
        assert_eq!(
            d.agent_online(100, 2),
            vec![
                assigned(2, 100),
                Effect::Queued {
                    customer: 3,
                    position: 1
                }
            ]
        );
        assert_eq!(d.customers_of(100), vec![1, 2]);
    }

    #[test]
    fn rekey_moves_a_visitor_session_or_closes_it() {
        let mut d = Desk::new();
        d.agent_online(100, 1);
        d.customer_message(1);
        d.customer_message(2);
        assert_eq!(d.position(2), Some(1));
        assert!(d.rekey(2, 20).is_empty());
        assert_eq!(d.position(20), Some(1));
        assert_eq!(d.session(2), None);
        assert!(d.rekey(1, 10).is_empty());
        assert_eq!(d.customers_of(100), vec![10]);
        // The registered user already has a session: the visitor's one closes.
        d.customer_message(3);
        d.customer_message(30);
        assert_eq!(
            d.rekey(3, 30),
            vec![
                Effect::Closed {
                    customer: 3,
                    agent: None
                },
                Effect::Queued {
                    customer: 30,
                    position: 2
                }
            ]
        );
        assert_eq!(d.waiting(10), vec![20, 30]);
    }
}
