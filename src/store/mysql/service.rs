//! Customer service and consultations on MySQL: service sessions and timed consultations.

use super::*;

const SESSION_COLS: &str =
    "id, customer_id, agent_id, created_at, assigned_at, closed_at, rating, comment";

const CONSULT_COLS: &str =
    "id, user_id, consultant_id, total_ms, remaining_ms, state, created_at, updated_at";

type ConsultTuple = (u64, u64, u64, u64, u64, u8, i64, i64);

fn consult_of(
    (id, user, consultant, total_ms, remaining_ms, state, created_at, updated_at): ConsultTuple,
) -> Consultation {
    Consultation {
        id,
        user,
        consultant,
        total_ms,
        remaining_ms,
        ended: state != 0,
        created_at,
        updated_at,
    }
}

fn consult_by_id(q: &mut impl Queryable, id: u64) -> Res<Option<Consultation>> {
    Ok(q.exec_first::<ConsultTuple, _, _>(
        format!("SELECT {CONSULT_COLS} FROM consultations WHERE id = ?"),
        (id,),
    )?
    .map(consult_of))
}

type SessionTuple = (
    u64,
    u64,
    Option<u64>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<u8>,
    String,
);

fn session_of(
    (id, customer, agent, created_at, assigned_at, closed_at, rating, comment): SessionTuple,
) -> ServiceSession {
    ServiceSession {
        id,
        customer,
        agent,
        created_at,
        assigned_at,
        closed_at,
        rating,
        comment,
    }
}

impl ServiceStore for MysqlStore {
    fn open_service_session(&self, customer: u64) -> StoreResult<ServiceSession> {
        let now = now_ms();
        // Two first messages at once meet the unique open_customer key; the retry finds the
        // session the other one opened.
        self.tx(|tx| {
            let existing: Option<SessionTuple> = tx.exec_first(
                format!(
                    "SELECT {SESSION_COLS} FROM service_sessions
                     WHERE open_customer = ? FOR UPDATE"
                ),
                (customer,),
            )?;
            if let Some(t) = existing {
                return Ok(session_of(t));
            }
            tx.exec_drop(
                "INSERT INTO service_sessions (customer_id, created_at) VALUES (?, ?)",
                (customer, now),
            )?;
            Ok(ServiceSession {
                id: tx.last_insert_id().unwrap_or(0),
                customer,
                agent: None,
                created_at: now,
                assigned_at: None,
                closed_at: None,
                rating: None,
                comment: String::new(),
            })
        })
    }

    fn assign_service_session(&self, customer: u64, agent: Option<u64>) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            let open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (customer,),
            )?;
            let Some(id) = open else {
                return Err(Fail::Store(StoreError::NotFound("open service session")));
            };
            tx.exec_drop(
                "UPDATE service_sessions SET agent_id = ?, assigned_at = ? WHERE id = ?",
                (agent, agent.map(|_| now), id),
            )?;
            Ok(())
        })
    }

    fn create_consultation(
        &self,
        user: u64,
        consultant: u64,
        duration_ms: u64,
    ) -> StoreResult<Consultation> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO consultations (user_id, consultant_id, total_ms, remaining_ms, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
                (user, consultant, duration_ms, duration_ms, now, now),
            )?;
            let id = tx.last_insert_id().unwrap_or(0);
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn extend_consultation(&self, id: u64, extra_ms: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE consultations SET total_ms = total_ms + ?, remaining_ms = remaining_ms + ?,
                 state = 0, ended_at = NULL, updated_at = ? WHERE id = ?",
                (extra_ms, extra_ms, now, id),
            )?;
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn end_consultation(&self, id: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "UPDATE consultations SET remaining_ms = 0, state = 1,
                 ended_at = COALESCE(ended_at, ?), updated_at = ? WHERE id = ?",
                (now, now, id),
            )?;
            consult_by_id(tx, id)?.ok_or(Fail::Store(StoreError::NotFound("consultation")))
        })
    }

    fn consultation(&self, id: u64) -> StoreResult<Option<Consultation>> {
        self.run(|c| consult_by_id(c, id))
    }

    fn active_consultations(&self, uid: u64) -> StoreResult<Vec<Consultation>> {
        self.run(|c| {
            let rows: Vec<ConsultTuple> = c.exec(
                format!(
                    "SELECT {CONSULT_COLS} FROM consultations WHERE user_id = ? AND state = 0
                     UNION SELECT {CONSULT_COLS} FROM consultations WHERE consultant_id = ? AND state = 0
                     ORDER BY id"
                ),
                (uid, uid),
            )?;
            Ok(rows.into_iter().map(consult_of).collect())
        })
    }

    fn use_consultation_time(&self, used: &[(u64, u64, bool)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_batch(
                "UPDATE consultations SET remaining_ms = IF(remaining_ms > ?, remaining_ms - ?, 0),
                 state = IF(?, 1, state), ended_at = IF(?, ?, ended_at), updated_at = ?
                 WHERE id = ?",
                used.iter()
                    .map(|(id, ms, ended)| (*ms, *ms, *ended, *ended, now, now, *id)),
            )?;
            Ok(())
        })
    }

    fn close_service_session(&self, customer: u64) -> StoreResult<Option<u64>> {
        let now = now_ms();
        self.tx(|tx| {
            let open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (customer,),
            )?;
            if let Some(id) = open {
                tx.exec_drop(
                    "UPDATE service_sessions SET closed_at = ? WHERE id = ?",
                    (now, id),
                )?;
            }
            Ok(open)
        })
    }

    fn rate_service_session(
        &self,
        id: u64,
        customer: u64,
        rating: u8,
        comment: &str,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let row: Option<(Option<i64>, Option<u8>)> = tx.exec_first(
                "SELECT closed_at, rating FROM service_sessions
                 WHERE id = ? AND customer_id = ? FOR UPDATE",
                (id, customer),
            )?;
            match row {
                None => Err(Fail::Store(StoreError::NotFound("service session"))),
                Some((None, _)) => Err(Fail::Store(StoreError::Conflict(
                    "the session is still open",
                ))),
                Some((_, Some(_))) => Err(Fail::Store(StoreError::Conflict(
                    "the session is already rated",
                ))),
                Some((Some(_), None)) => {
                    tx.exec_drop(
                        "UPDATE service_sessions SET rating = ?, comment = ? WHERE id = ?",
                        (rating, comment, id),
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn open_service_sessions(&self) -> StoreResult<Vec<ServiceSession>> {
        self.run(|c| {
            let rows: Vec<SessionTuple> = c.query(format!(
                "SELECT {SESSION_COLS} FROM service_sessions WHERE closed_at IS NULL
                 ORDER BY created_at, id"
            ))?;
            Ok(rows.into_iter().map(session_of).collect())
        })
    }
}
