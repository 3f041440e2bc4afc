use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use warren_api::{ResolvedResources, SnapshotKind};

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// What a sandbox created from a snapshot inherits (the `data` column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDefaults {
    /// Environment of the source sandbox.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub workdir: String,
    /// Its default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_command: Option<Vec<String>>,
    /// Its limits.
    pub resources: ResolvedResources,
    /// Digest of its OCI image (`None` for the built-in image), so a tag
    /// pulled again with other layers is not mistaken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// `snap_…`.
    pub id: String,
    /// Human name, if any.
    pub name: Option<String>,
    /// Why it exists.
    pub kind: SnapshotKind,
    /// The sandbox it was taken from (which may be gone since).
    pub sandbox_id: String,
    /// The image under its layers.
    pub image: String,
    /// The driver of the sandbox it was taken from.
    pub driver: String,
    /// Layer directories a sandbox created from it stacks, top first: its
    /// own, then those of the snapshots it builds on.
    pub layers: Vec<PathBuf>,
    /// Bytes of file data in its own layer.
    pub size_bytes: u64,
    /// Defaults of sandboxes created from it.
    pub defaults: SnapshotDefaults,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
}

fn kind_text(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::User => "user",
        SnapshotKind::Fork => "fork",
        SnapshotKind::Template => "template",
    }
}

fn corrupt(id: &str, field: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        field,
        message: message.to_string(),
    }
}

const SNAPSHOT_COLUMNS: &str =
    "id, name, kind, sandbox_id, image, driver, layers, size_bytes, data, created_at";

fn decode_snapshot(row: &SqliteRow) -> Result<SnapshotRecord, StoreError> {
    let get = |column: &'static str| -> Result<String, StoreError> {
        row.try_get(column).map_err(query_error("decode snapshot"))
    };
    let id = get("id")?;
    let kind = match get("kind")?.as_str() {
        "user" => SnapshotKind::User,
        "fork" => SnapshotKind::Fork,
        "template" => SnapshotKind::Template,
        other => return Err(corrupt(&id, "kind", other)),
    };
    let size: i64 = row
        .try_get("size_bytes")
        .map_err(query_error("decode snapshot"))?;
    Ok(SnapshotRecord {
        name: row
            .try_get("name")
            .map_err(query_error("decode snapshot"))?,
        kind,
        sandbox_id: get("sandbox_id")?,
        image: get("image")?,
        driver: get("driver")?,
        layers: serde_json::from_str(&get("layers")?).map_err(|e| corrupt(&id, "layers", e))?,
        size_bytes: u64::try_from(size).map_err(|e| corrupt(&id, "size_bytes", e))?,
        defaults: serde_json::from_str(&get("data")?).map_err(|e| corrupt(&id, "data", e))?,
        created_at: parse_timestamp(&id, "created_at", &get("created_at")?)?,
        id,
    })
}

impl Store {
    /// Inserts a new snapshot.
    pub async fn insert_snapshot(&self, rec: &SnapshotRecord) -> Result<(), StoreError> {
        let layers =
            serde_json::to_string(&rec.layers).map_err(|e| corrupt(&rec.id, "layers", e))?;
        let data = serde_json::to_string(&rec.defaults).map_err(|e| corrupt(&rec.id, "data", e))?;
        let size = i64::try_from(rec.size_bytes).map_err(|_| StoreError::OutOfRange {
            field: "size_bytes",
            value: rec.size_bytes,
        })?;
        let sql = format!(
            "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        sqlx::query(&sql)
            .bind(&rec.id)
            .bind(&rec.name)
            .bind(kind_text(rec.kind))
            .bind(&rec.sandbox_id)
            .bind(&rec.image)
            .bind(&rec.driver)
            .bind(layers)
            .bind(size)
            .bind(data)
            .bind(timestamp_text(rec.created_at))
            .execute(&self.pool)
            .await
            .map_err(query_error("insert snapshot"))?;
        Ok(())
    }

    /// The snapshot with this id, if any.
    pub async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get snapshot"))?;
        row.as_ref().map(decode_snapshot).transpose()
    }

    /// Every snapshot, newest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        let sql =
            format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at DESC, id DESC");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list snapshots"))?;
        rows.iter().map(decode_snapshot).collect()
    }

    /// Removes a snapshot's row; true when there was one.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete snapshot"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Names of the templates whose build made this snapshot.
    pub async fn templates_using_snapshot(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM templates WHERE snapshot_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list templates of snapshot"))?;
        rows.iter()
            .map(|row| row.try_get("name").map_err(query_error("decode template")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn record(id: &str, kind: SnapshotKind, at: DateTime<Utc>) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: Some("named".into()),
            kind,
            sandbox_id: "sb".into(),
            image: "host".into(),
            driver: "namespace".into(),
            layers: vec![PathBuf::from("/d/snapshots/x/layer"), PathBuf::from("/d/y")],
            size_bytes: 42,
            defaults: SnapshotDefaults {
                env: BTreeMap::from([("A".into(), "1".into())]),
                workdir: "/workspace".into(),
                user: Some("agent".into()),
                default_command: Some(vec!["sh".into()]),
                resources: ResolvedResources::default(),
                image_digest: None,
            },
            created_at: at,
        }
    }

    #[tokio::test]
    async fn snapshots_round_trip_list_newest_first_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000001Z")
            .unwrap()
            .with_timezone(&Utc);
        let old = record("snap_old", SnapshotKind::Fork, t0);
        let new = record(
            "snap_new",
            SnapshotKind::Template,
            t0 + chrono::Duration::seconds(1),
        );
        store.insert_snapshot(&old).await.unwrap();
        store.insert_snapshot(&new).await.unwrap();
        assert_eq!(store.get_snapshot("snap_old").await.unwrap(), Some(old));
        let ids: Vec<String> = store
            .list_snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["snap_new", "snap_old"]);
        assert!(store.delete_snapshot("snap_old").await.unwrap());
        assert!(!store.delete_snapshot("snap_old").await.unwrap());
        assert_eq!(store.get_snapshot("snap_old").await.unwrap(), None);
        assert!(store
            .templates_using_snapshot("snap_new")
            .await
            .unwrap()
            .is_empty());
    }
}
