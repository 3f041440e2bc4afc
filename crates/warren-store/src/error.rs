use std::path::PathBuf;

/// Everything that can go wrong in the store. Each variant names what Warren was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("creating data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("opening database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed; the database is from a newer Warren or damaged.
    #[error("running database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database {operation} failed: {source}")]
    Query {
        /// What the query was for, for example `insert sandbox`.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupt {field} in row {id}: {message}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// The column.
        field: &'static str,
        /// Why it could not be decoded.
        message: String,
    },
    /// A value does not fit the database's integer type.
    #[error("{field} is out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// No sandbox has this id.
    #[error("no sandbox with id {0}")]
    SandboxNotFound(String),
    /// A sandbox with this id already exists.
    #[error("a sandbox with id {0} already exists")]
    DuplicateSandbox(String),
    /// API key names are unique.
    #[error("an API key named {0:?} already exists")]
    DuplicateKeyName(String),
}

impl StoreError {
    /// True when the error is a unique-constraint violation.
    pub(crate) fn is_unique_violation(source: &sqlx::Error) -> bool {
        matches!(source, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}
