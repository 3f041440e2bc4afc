use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// One recorded event of a sandbox (a state transition, for now).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Increasing id; later events have larger ids.
    pub id: i64,
    /// The sandbox the event is about.
    pub sandbox_id: String,
    /// What happened, for example `running` or `failed`.
    pub kind: String,
    /// Details, for example `{"reason": "…"}`.
    pub data: serde_json::Value,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl Store {
    /// Appends an event to a sandbox's log.
    pub async fn record_event(
        &self,
        sandbox_id: &str,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sandbox_events (sandbox_id, kind, data, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(sandbox_id)
        .bind(kind)
        .bind(data.to_string())
        .bind(timestamp_text(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(query_error("insert event"))?;
        Ok(())
    }

    /// Appends an event to a sandbox's log and returns it with its id.
    pub async fn append_event(
        &self,
        sandbox_id: &str,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<EventRecord, StoreError> {
        // Stored with microseconds: what is returned equals what is read back.
        let at = Utc::now().trunc_subsecs(6);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sandbox_events (sandbox_id, kind, data, at) VALUES ($1, $2, $3, $4) \
             RETURNING id",
        )
        .bind(sandbox_id)
        .bind(kind)
        .bind(data.to_string())
        .bind(timestamp_text(at))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("insert event"))?;
        Ok(EventRecord {
            id,
            sandbox_id: sandbox_id.to_owned(),
            kind: kind.to_owned(),
            data: data.clone(),
            at,
        })
    }

    /// A sandbox's events, oldest first.
    pub async fn list_events(&self, sandbox_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.list_events_after(sandbox_id, 0).await
    }

    /// A sandbox's events with an id larger than `after`, oldest first.
    pub async fn list_events_after(
        &self,
        sandbox_id: &str,
        after: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sandbox_id, kind, data, at FROM sandbox_events \
             WHERE sandbox_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(sandbox_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list events"))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id").map_err(query_error("decode event"))?;
                let data: String = row.try_get("data").map_err(query_error("decode event"))?;
                let at: String = row.try_get("at").map_err(query_error("decode event"))?;
                Ok(EventRecord {
                    id,
                    sandbox_id: row
                        .try_get("sandbox_id")
                        .map_err(query_error("decode event"))?,
                    kind: row.try_get("kind").map_err(query_error("decode event"))?,
                    data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                        id: id.to_string(),
                        field: "data",
                        message: e.to_string(),
                    })?,
                    at: parse_timestamp(&id.to_string(), "at", &at)?,
                })
            })
            .collect()
    }
}

impl Store {
    /// Sets only the `lastActivityAt` of a sandbox's lifecycle (the rest of
    /// the object is left as it is, so no lock against concurrent updates
    /// is needed). A missing sandbox is not an error.
    pub async fn set_last_activity(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sandboxes SET lifecycle = json_set(lifecycle, '$.lastActivityAt', $1) \
             WHERE id = $2",
        )
        .bind(timestamp_text(at))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("set sandbox activity"))?;
        Ok(())
    }

    /// Ids of the running, paused or suspended sandboxes with a timeout or
    /// an idle timeout (what the timeout checker looks at).
    pub async fn timed_sandbox_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE state IN ('running', 'paused', 'suspended') \
             AND (json_extract(lifecycle, '$.timeoutSecs') IS NOT NULL \
                  OR json_extract(lifecycle, '$.idleTimeoutSecs') IS NOT NULL)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list timed sandboxes"))
    }
}
