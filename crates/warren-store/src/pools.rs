//! Warm pools: how many ready sandboxes to keep per template, and the
//! one-write claim of a pooled sandbox.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{parse_timestamp, query_error, timestamp_text, Lifecycle, Store, StoreError};

/// A warm pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    /// The template its sandboxes are created from.
    pub template: String,
    /// How many ready sandboxes to keep.
    pub size: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

fn decode_pool(row: &SqliteRow) -> Result<PoolRecord, StoreError> {
    let template: String = row
        .try_get("template")
        .map_err(query_error("decode pool"))?;
    let size: i64 = row.try_get("size").map_err(query_error("decode pool"))?;
    let created_at: String = row
        .try_get("created_at")
        .map_err(query_error("decode pool"))?;
    Ok(PoolRecord {
        size: u64::try_from(size).map_err(|e| StoreError::Corrupt {
            id: template.clone(),
            field: "size",
            message: e.to_string(),
        })?,
        created_at: parse_timestamp(&template, "created_at", &created_at)?,
        template,
    })
}

impl Store {
    /// Inserts a pool; `false` (and nothing changed) when the template
    /// already has one.
    pub async fn insert_pool(&self, rec: &PoolRecord) -> Result<bool, StoreError> {
        let size = i64::try_from(rec.size).map_err(|_| StoreError::OutOfRange {
            field: "size",
            value: rec.size,
        })?;
        let result = sqlx::query(
            "INSERT INTO pools (template, size, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (template) DO NOTHING",
        )
        .bind(&rec.template)
        .bind(size)
        .bind(timestamp_text(rec.created_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("insert pool"))?;
        Ok(result.rows_affected() == 1)
    }

    /// The pool of this template, if any.
    pub async fn get_pool(&self, template: &str) -> Result<Option<PoolRecord>, StoreError> {
        let row = sqlx::query("SELECT template, size, created_at FROM pools WHERE template = $1")
            .bind(template)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get pool"))?;
        row.as_ref().map(decode_pool).transpose()
    }

    /// All pools by template name.
    pub async fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let rows = sqlx::query("SELECT template, size, created_at FROM pools ORDER BY template")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list pools"))?;
        rows.iter().map(decode_pool).collect()
    }

    /// Removes the pool; `false` when there was none.
    pub async fn delete_pool(&self, template: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM pools WHERE template = $1")
            .bind(template)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete pool"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Hands a pooled sandbox to its claimer in one write: its new name,
    /// labels and lifecycle (no longer pooled).
    pub async fn claim_pooled_sandbox(
        &self,
        id: &str,
        name: Option<&str>,
        metadata: &BTreeMap<String, String>,
        lifecycle: &Lifecycle,
    ) -> Result<(), StoreError> {
        let corrupt = |field: &'static str, e: serde_json::Error| StoreError::Corrupt {
            id: id.to_owned(),
            field,
            message: e.to_string(),
        };
        let metadata = serde_json::to_string(metadata).map_err(|e| corrupt("metadata", e))?;
        let lifecycle = serde_json::to_string(lifecycle).map_err(|e| corrupt("lifecycle", e))?;
        let result = sqlx::query(
            "UPDATE sandboxes SET name = $1, metadata = $2, lifecycle = $3 WHERE id = $4",
        )
        .bind(name)
        .bind(metadata)
        .bind(lifecycle)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("claim pooled sandbox"))?;
        if result.rows_affected() == 0 {
            return Err(StoreError::SandboxNotFound(id.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TemplateRecord;
    use warren_api::{CreateTemplateRequest, TemplateState};

    #[tokio::test]
    async fn templates_and_pools_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut template = TemplateRecord {
            name: "t".into(),
            recipe: CreateTemplateRequest {
                name: "t".into(),
                setup: vec!["true".into()],
                ..CreateTemplateRequest::default()
            },
            recipe_hash: "abc".into(),
            state: TemplateState::Building,
            snapshot_id: None,
            failure_reason: None,
            created_at: now,
            updated_at: now,
        };
        store.put_template(&template).await.unwrap();
        template.state = TemplateState::Ready;
        template.snapshot_id = Some("snap_x".into());
        store.put_template(&template).await.unwrap();
        assert_eq!(
            store.get_template("t").await.unwrap(),
            Some(template.clone())
        );
        assert_eq!(store.list_templates().await.unwrap(), vec![template]);

        let pool = PoolRecord {
            template: "t".into(),
            size: 3,
            created_at: now,
        };
        assert!(store.insert_pool(&pool).await.unwrap());
        assert!(
            !store.insert_pool(&pool).await.unwrap(),
            "one pool per template"
        );
        assert_eq!(store.get_pool("t").await.unwrap(), Some(pool.clone()));
        assert_eq!(store.list_pools().await.unwrap(), vec![pool]);
        assert!(store.delete_pool("t").await.unwrap());
        assert!(!store.delete_pool("t").await.unwrap());
        assert!(store.delete_template("t").await.unwrap());
        assert_eq!(store.get_template("t").await.unwrap(), None);
    }
}
