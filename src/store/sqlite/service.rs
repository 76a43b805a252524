//! Customer service and consultations on SQLite: service sessions and timed consultations.

use super::*;

const SESSION_COLS: &str =
    "id, customer_id, agent_id, created_at, assigned_at, closed_at, rating, comment";

const CONSULT_COLS: &str =
    "id, user_id, consultant_id, total_ms, remaining_ms, state, created_at, updated_at";

fn consult_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Consultation> {
    Ok(Consultation {
        id: r.get::<_, i64>(0)? as u64,
        user: r.get::<_, i64>(1)? as u64,
        consultant: r.get::<_, i64>(2)? as u64,
        total_ms: r.get::<_, i64>(3)? as u64,
        remaining_ms: r.get::<_, i64>(4)? as u64,
        ended: r.get::<_, i64>(5)? != 0,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn consult_by_id(c: &Connection, id: u64) -> rusqlite::Result<Option<Consultation>> {
    c.query_row(
        &format!("SELECT {CONSULT_COLS} FROM consultations WHERE id = ?1"),
        params![id as i64],
        consult_row,
    )
    .optional()
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceSession> {
    Ok(ServiceSession {
        id: r.get::<_, i64>(0)? as u64,
        customer: r.get::<_, i64>(1)? as u64,
        agent: r.get::<_, Option<i64>>(2)?.map(|a| a as u64),
        created_at: r.get(3)?,
        assigned_at: r.get(4)?,
        closed_at: r.get(5)?,
        rating: r.get(6)?,
        comment: r.get(7)?,
    })
}

impl ServiceStore for SqliteStore {
    fn open_service_session(&self, customer: u64) -> StoreResult<ServiceSession> {
        let now = now_ms();
        self.with_tx(|tx| {
            let existing = tx
                .query_row(
                    &format!("SELECT {SESSION_COLS} FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL"),
                    params![customer as i64],
                    session_row,
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(s) = existing {
                return Ok(s);
            }
            tx.execute(
                "INSERT INTO service_sessions (customer_id, created_at) VALUES (?1, ?2)",
                params![customer as i64, now],
            )
            .map_err(unavailable)?;
            Ok(ServiceSession {
                id: tx.last_insert_rowid() as u64,
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
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE service_sessions SET agent_id = ?2,
                     assigned_at = CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END
                     WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![customer as i64, agent.map(|a| a as i64), now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("open service session"));
            }
            Ok(())
        })
    }

    fn close_service_session(&self, customer: u64) -> StoreResult<Option<u64>> {
        let now = now_ms();
        self.with_tx(|tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![customer as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(id) = id {
                tx.execute(
                    "UPDATE service_sessions SET closed_at = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(unavailable)?;
            }
            Ok(id.map(|i| i as u64))
        })
    }

    fn rate_service_session(
        &self,
        id: u64,
        customer: u64,
        rating: u8,
        comment: &str,
    ) -> StoreResult<()> {
        self.with_tx(|tx| {
            let row: Option<(Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT closed_at, rating FROM service_sessions WHERE id = ?1 AND customer_id = ?2",
                    params![id as i64, customer as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            match row {
                None => Err(StoreError::NotFound("service session")),
                Some((None, _)) => Err(StoreError::Conflict("the session is still open")),
                Some((_, Some(_))) => Err(StoreError::Conflict("the session is already rated")),
                Some((Some(_), None)) => {
                    tx.execute(
                        "UPDATE service_sessions SET rating = ?2, comment = ?3 WHERE id = ?1",
                        params![id as i64, rating, comment],
                    )
                    .map_err(unavailable)?;
                    Ok(())
                }
            }
        })
    }

    fn open_service_sessions(&self) -> StoreResult<Vec<ServiceSession>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SESSION_COLS} FROM service_sessions WHERE closed_at IS NULL
                 ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], session_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    fn create_consultation(
        &self,
        user: u64,
        consultant: u64,
        duration_ms: u64,
    ) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO consultations (user_id, consultant_id, total_ms, remaining_ms, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?4)",
                params![user as i64, consultant as i64, duration_ms as i64, now],
            )
            .map_err(unavailable)?;
            consult_by_id(tx, tx.last_insert_rowid() as u64)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn extend_consultation(&self, id: u64, extra_ms: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE consultations SET total_ms = total_ms + ?2, remaining_ms = remaining_ms + ?2,
                     state = 0, ended_at = NULL, updated_at = ?3 WHERE id = ?1",
                    params![id as i64, extra_ms as i64, now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("consultation"));
            }
            consult_by_id(tx, id)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn end_consultation(&self, id: u64) -> StoreResult<Consultation> {
        let now = now_ms();
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE consultations SET remaining_ms = 0, state = 1,
                     ended_at = COALESCE(ended_at, ?2), updated_at = ?2 WHERE id = ?1",
                    params![id as i64, now],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("consultation"));
            }
            consult_by_id(tx, id)
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound("consultation"))
        })
    }

    fn consultation(&self, id: u64) -> StoreResult<Option<Consultation>> {
        self.with_conn(|c| consult_by_id(c, id))
    }

    fn active_consultations(&self, uid: u64) -> StoreResult<Vec<Consultation>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CONSULT_COLS} FROM consultations WHERE user_id = ?1 AND state = 0
                 UNION SELECT {CONSULT_COLS} FROM consultations WHERE consultant_id = ?1 AND state = 0
                 ORDER BY id"
            ))?;
            let rows = stmt
                .query_map(params![uid as i64], consult_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    fn use_consultation_time(&self, used: &[(u64, u64, bool)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.with_tx(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE consultations SET remaining_ms = MAX(remaining_ms - ?2, 0),
                     state = CASE WHEN ?3 THEN 1 ELSE state END,
                     ended_at = CASE WHEN ?3 THEN ?4 ELSE ended_at END, updated_at = ?4
                     WHERE id = ?1",
                )
                .map_err(unavailable)?;
            for (id, used_ms, ended) in used {
                stmt.execute(params![*id as i64, *used_ms as i64, *ended, now])
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }
}
