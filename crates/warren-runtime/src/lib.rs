//! Warren's isolation drivers behind one [`Driver`] trait.

mod agent_conn;
mod capacity;
mod change_archive;
mod changes;
mod changes_scan;
mod driver;
mod files;
pub mod images;
mod namespace;
mod namespace_changes;
mod namespace_files;
mod process;
mod process_state;
mod rooted_dir;

pub use capacity::HostCapacity;
pub use changes::{Change, ChangeKind, ChangeTracking};
pub use driver::{Driver, DriverError, ExecOutcome, ExecSpec, Pausable, RuntimeInfo, SandboxSpec};
pub use files::{
    ByteStream, FileControl, FileKind, FileStat, GrepMatch, GrepSpec, SearchResult, UnpackSummary,
    WatchEvent, WatchKind, WriteSpec,
};
pub use namespace::{NamespaceConfig, NamespaceDriver, AGENT_BINARY};
pub use process::{ProcessControl, ProcessEvent, ProcessInfo, SpawnSpec};
