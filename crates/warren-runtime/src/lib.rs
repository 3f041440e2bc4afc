//! Warren's isolation drivers behind one [`Driver`] trait.

mod agent_conn;
mod agent_host;
mod capacity;
mod change_archive;
mod changes;
mod changes_scan;
mod driver;
mod files;
mod gvisor;
mod gvisor_bundle;
mod gvisor_snapshot;
mod gvisor_suspend;
pub mod images;
mod layer_copy;
mod namespace;
mod namespace_changes;
mod namespace_files;
mod namespace_snapshot;
mod namespace_suspend;
pub mod netns;
pub mod network;
mod process;
mod process_state;
mod rooted_dir;

pub use capacity::HostCapacity;
pub use changes::{Change, ChangeKind, ChangeTracking};
pub use driver::{
    Driver, DriverError, ExecOutcome, ExecSpec, MemoryForking, Pausable, RuntimeInfo, SandboxSpec,
    Snapshottable, Suspending,
};
pub use files::{
    ByteStream, FileControl, FileKind, FileStat, GrepMatch, GrepSpec, SearchResult, UnpackSummary,
    WatchEvent, WatchKind, WriteSpec,
};
pub use gvisor::{runsc_version, GvisorConfig, GvisorDriver};
pub use namespace::{NamespaceConfig, NamespaceDriver, AGENT_BINARY};
pub use process::{ProcessControl, ProcessEvent, ProcessInfo, SpawnSpec};
