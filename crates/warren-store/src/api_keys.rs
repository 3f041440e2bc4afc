use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// Prefix of every API key secret, so that leaked keys are easy to grep for.
pub const API_KEY_PREFIX: &str = "wrn_";

/// A freshly created API key. The secret is shown once and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// `key_` followed by 12 lowercase letters and digits.
    pub id: String,
    /// The name given at creation (unique).
    pub name: String,
    /// `wrn_` followed by 64 hex digits (256 random bits).
    pub secret: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// What is known about a stored API key (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// `key_…` id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_key_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("key_{suffix}")
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the OS.
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{API_KEY_PREFIX}{}", hex::encode(bytes))
}

fn decode_key(row: &SqliteRow) -> Result<ApiKeyInfo, StoreError> {
    let id: String = row.try_get("id").map_err(query_error("decode api key"))?;
    let created_at: String = row
        .try_get("created_at")
        .map_err(query_error("decode api key"))?;
    Ok(ApiKeyInfo {
        name: row.try_get("name").map_err(query_error("decode api key"))?,
        created_at: parse_timestamp(&id, "created_at", &created_at)?,
        id,
    })
}

impl Store {
    /// Creates a key named `name` (names are unique) and returns its secret, once.
    pub async fn create_api_key(&self, name: &str) -> Result<NewApiKey, StoreError> {
        let key = NewApiKey {
            id: new_key_id(),
            name: name.to_owned(),
            secret: new_secret(),
            created_at: Utc::now(),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_sha256, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(secret_sha256(&key.secret))
        .bind(timestamp_text(key.created_at))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if StoreError::is_unique_violation(&source) {
                StoreError::DuplicateKeyName(name.to_owned())
            } else {
                StoreError::Query {
                    operation: "insert api key",
                    source,
                }
            }
        })?;
        Ok(NewApiKey {
            created_at: parse_timestamp(&key.id, "created_at", &timestamp_text(key.created_at))?,
            ..key
        })
    }

    /// All keys, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM api_keys ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list api keys"))?;
        rows.iter().map(decode_key).collect()
    }

    /// Deletes the key with this id or name; false when there is none.
    pub async fn delete_api_key(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM api_keys WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete api key"))?;
        Ok(result.rows_affected() > 0)
    }

    /// The key whose secret is `presented`, if any. Every stored hash is compared
    /// in constant time, so timing reveals nothing about near matches.
    pub async fn verify_api_key(&self, presented: &str) -> Result<Option<ApiKeyInfo>, StoreError> {
        let presented_hash = secret_sha256(presented);
        let rows = sqlx::query("SELECT id, name, secret_sha256, created_at FROM api_keys")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("verify api key"))?;
        let mut found = None;
        for row in &rows {
            let stored: String = row
                .try_get("secret_sha256")
                .map_err(query_error("decode api key"))?;
            if bool::from(stored.as_bytes().ct_eq(presented_hash.as_bytes())) {
                found = Some(decode_key(row)?);
            }
        }
        Ok(found)
    }
}
