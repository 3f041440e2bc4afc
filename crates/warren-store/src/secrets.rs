//! Secrets: values sealed by the daemon, stored by name. The store only ever
//! sees the sealed text, never a plaintext value.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// A stored secret: its name, its sealed value and its times.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// The environment variable name.
    pub name: String,
    /// The value as the daemon sealed it (opaque to the store).
    pub value_sealed: String,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When its value last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even sealed, the value stays out of debug output.
        f.debug_struct("SecretRecord")
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

fn decode_secret(row: &SqliteRow) -> Result<SecretRecord, StoreError> {
    let name: String = row.try_get("name").map_err(query_error("decode secret"))?;
    let created_at: String = row
        .try_get("created_at")
        .map_err(query_error("decode secret"))?;
    let updated_at: String = row
        .try_get("updated_at")
        .map_err(query_error("decode secret"))?;
    Ok(SecretRecord {
        value_sealed: row
            .try_get("value_sealed")
            .map_err(query_error("decode secret"))?,
        created_at: parse_timestamp(&name, "created_at", &created_at)?,
        updated_at: parse_timestamp(&name, "updated_at", &updated_at)?,
        name,
    })
}

impl Store {
    /// Creates the secret `name` or replaces its value (keeping its creation
    /// time); returns the stored record.
    pub async fn put_secret(
        &self,
        name: &str,
        value_sealed: &str,
        at: DateTime<Utc>,
    ) -> Result<SecretRecord, StoreError> {
        let at = timestamp_text(at);
        sqlx::query(
            "INSERT INTO secrets (name, value_sealed, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET value_sealed = excluded.value_sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value_sealed)
        .bind(&at)
        .execute(&self.pool)
        .await
        .map_err(query_error("put secret"))?;
        self.get_secret(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: name.to_owned(),
                field: "name",
                message: "the secret vanished right after it was stored".to_owned(),
            })
    }

    /// The secret `name`, if any.
    pub async fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, value_sealed, created_at, updated_at FROM secrets WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("get secret"))?;
        row.as_ref().map(decode_secret).transpose()
    }

    /// Every secret, by name.
    pub async fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, value_sealed, created_at, updated_at FROM secrets ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list secrets"))?;
        rows.iter().map(decode_secret).collect()
    }

    /// Deletes the secret `name`; false when there is none.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete secret"))?;
        Ok(result.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::{Duration, Utc};

    use crate::Store;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let t0 = Utc::now();
        let first = store.put_secret("B_KEY", "sealed-1", t0).await.unwrap();
        assert_eq!(first.value_sealed, "sealed-1");
        assert_eq!(first.created_at, first.updated_at);
        store.put_secret("A_KEY", "sealed-a", t0).await.unwrap();
        let replaced = store
            .put_secret("B_KEY", "sealed-2", t0 + Duration::seconds(5))
            .await
            .unwrap();
        assert_eq!(replaced.value_sealed, "sealed-2");
        assert_eq!(replaced.created_at, first.created_at);
        assert!(replaced.updated_at > first.updated_at);
        let names: Vec<String> = store
            .list_secrets()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["A_KEY", "B_KEY"]);
        assert!(store.delete_secret("B_KEY").await.unwrap());
        assert!(!store.delete_secret("B_KEY").await.unwrap());
        assert!(store.get_secret("B_KEY").await.unwrap().is_none());
        assert!(!format!("{:?}", store.get_secret("A_KEY").await.unwrap()).contains("sealed-a"));
    }
}
