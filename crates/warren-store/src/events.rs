use chrono::{DateTime, Utc};
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

    /// A sandbox's events, oldest first.
    pub async fn list_events(&self, sandbox_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sandbox_id, kind, data, at FROM sandbox_events WHERE sandbox_id = $1 ORDER BY id",
        )
        .bind(sandbox_id)
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
