//! Warren's persistence: sandboxes, their events and API keys.
//!
//! SQLite (one file, `warren.db`, in the data directory) is the default. The
//! SQL is kept portable (`$1` placeholders, TEXT/BIGINT columns, timestamps as
//! RFC 3339 text) so that a PostgreSQL backend needs new migrations only.

mod api_keys;
mod error;
mod events;
mod pools;
mod sandboxes;
mod secrets;
mod snapshots;
mod templates;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use api_keys::{ApiKeyInfo, NewApiKey, API_KEY_PREFIX};
pub use error::StoreError;
pub use events::EventRecord;
pub use pools::PoolRecord;
pub use sandboxes::{Lifecycle, SandboxRecord};
pub use secrets::SecretRecord;
pub use snapshots::{SnapshotDefaults, SnapshotRecord};
pub use templates::TemplateRecord;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "warren.db";

/// A handle to the database. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) `data_dir/warren.db` and runs migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open_error)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store { pool })
    }
}

/// Fixed-width RFC 3339 UTC text with microseconds, so text order is time order.
fn timestamp_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(id: &str, field: &'static str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            id: id.to_owned(),
            field,
            message: e.to_string(),
        })
}

/// Maps a sqlx error to [`StoreError::Query`], naming the operation.
fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}
