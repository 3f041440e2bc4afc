use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use subtle::ConstantTimeEq;
use warren_api::ApiKeyScope;

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
    /// What the key may do.
    pub scopes: Vec<ApiKeyScope>,
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
    /// What the key may do.
    pub scopes: Vec<ApiKeyScope>,
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

/// The stored form of a scope list: names joined by commas, sorted, no
/// duplicates.
fn scopes_text(scopes: &[ApiKeyScope]) -> String {
    let mut sorted = scopes.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`scopes_text`]'s form (or a JSON list of names).
fn parse_scopes(id: &str, text: &str) -> Result<Vec<ApiKeyScope>, StoreError> {
    let names: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            id: id.to_owned(),
            field: "scopes",
            message: e.to_string(),
        })?
    } else {
        text.split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    };
    let mut scopes = names
        .iter()
        .map(|name| {
            ApiKeyScope::parse(name).ok_or_else(|| StoreError::Corrupt {
                id: id.to_owned(),
                field: "scopes",
                message: format!("unknown scope {name:?}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

fn decode_key(row: &SqliteRow) -> Result<ApiKeyInfo, StoreError> {
    let id: String = row.try_get("id").map_err(query_error("decode api key"))?;
    let created_at: String = row
        .try_get("created_at")
        .map_err(query_error("decode api key"))?;
    let scopes: String = row
        .try_get("scopes")
        .map_err(query_error("decode api key"))?;
    Ok(ApiKeyInfo {
        name: row.try_get("name").map_err(query_error("decode api key"))?,
        scopes: parse_scopes(&id, &scopes)?,
        created_at: parse_timestamp(&id, "created_at", &created_at)?,
        id,
    })
}

impl Store {
    /// Creates an `admin` key named `name` (names are unique) and returns
    /// its secret, once.
    pub async fn create_api_key(&self, name: &str) -> Result<NewApiKey, StoreError> {
        self.create_api_key_with_scopes(name, &[ApiKeyScope::Admin])
            .await
    }

    /// Creates a key named `name` with these scopes (none: `admin`) and
    /// returns its secret, once.
    pub async fn create_api_key_with_scopes(
        &self,
        name: &str,
        scopes: &[ApiKeyScope],
    ) -> Result<NewApiKey, StoreError> {
        let scopes = if scopes.is_empty() {
            vec![ApiKeyScope::Admin]
        } else {
            parse_scopes("new key", &scopes_text(scopes))?
        };
        let key = NewApiKey {
            id: new_key_id(),
            name: name.to_owned(),
            secret: new_secret(),
            scopes,
            created_at: Utc::now(),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_sha256, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(secret_sha256(&key.secret))
        .bind(scopes_text(&key.scopes))
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
        let rows = sqlx::query(
            "SELECT id, name, scopes, created_at FROM api_keys ORDER BY created_at, id",
        )
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
        let rows = sqlx::query("SELECT id, name, secret_sha256, scopes, created_at FROM api_keys")
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use warren_api::ApiKeyScope;

    use super::{parse_scopes, scopes_text};
    use crate::Store;

    #[test]
    fn scopes_round_trip_in_both_forms() {
        let text = scopes_text(&[
            ApiKeyScope::SandboxesRead,
            ApiKeyScope::Admin,
            ApiKeyScope::SandboxesRead,
        ]);
        assert_eq!(text, "admin,sandboxes:read");
        assert_eq!(
            parse_scopes("k", &text).unwrap(),
            [ApiKeyScope::Admin, ApiKeyScope::SandboxesRead]
        );
        assert_eq!(
            parse_scopes("k", r#"["sandboxes:write"]"#).unwrap(),
            [ApiKeyScope::SandboxesWrite]
        );
        assert!(parse_scopes("k", "root").is_err());
    }

    #[tokio::test]
    async fn keys_keep_their_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let admin = store.create_api_key("a").await.unwrap();
        assert_eq!(admin.scopes, [ApiKeyScope::Admin]);
        let reader = store
            .create_api_key_with_scopes("r", &[ApiKeyScope::SandboxesRead])
            .await
            .unwrap();
        let verified = store.verify_api_key(&reader.secret).await.unwrap().unwrap();
        assert_eq!(verified.scopes, [ApiKeyScope::SandboxesRead]);
        let listed = store.list_api_keys().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].scopes, [ApiKeyScope::Admin]);
    }
}
