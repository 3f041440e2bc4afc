//! The contract between the service layer and an isolation driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Everything a driver needs to start a sandbox. Values are already validated
/// and defaulted by the service layer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// DNS-label safe sandbox id; also the hostname inside the sandbox.
    pub id: String,
    /// Image name (`host` is the only built-in image).
    pub image: String,
    /// Unpacked layer directories of an OCI image, top layer first; empty
    /// for the built-in `host` image.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// Read-only layers of the snapshot the sandbox starts from, top first,
    /// stacked above the image (its layers or the `host` image).
    #[serde(default)]
    pub snapshot_layers: Vec<PathBuf>,
    /// CPU quota in cores.
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Process/thread limit.
    pub pids_limit: u64,
    /// Size of the sandbox's own disk in MiB (`None`: no separate disk).
    pub disk_mb: Option<u64>,
    /// Environment for every command.
    pub env: Vec<(String, String)>,
    /// Default working directory inside the sandbox.
    pub workdir: String,
    /// Default user of commands (`None`: root).
    pub user: Option<String>,
}

/// What the store keeps about a running sandbox so that a restarted daemon
/// can find it again. Opaque to the service layer (stored as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Host pid of the sandbox's PID 1 (the agent).
    pub pid: i32,
    /// Its start time in clock ticks (field 22 of /proc/PID/stat), so a
    /// recycled pid is never mistaken for the sandbox.
    pub start_time: u64,
    /// The unix socket the agent listens on.
    pub agent_socket: PathBuf,
}

/// One command to run to completion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSpec {
    /// Program and arguments (`argv[0]` is looked up in PATH).
    pub argv: Vec<String>,
    /// Working directory; `None` means the sandbox's workdir.
    pub cwd: Option<String>,
    /// Environment added on top of the sandbox's.
    pub env: Vec<(String, String)>,
    /// Bytes written to stdin before it is closed.
    pub stdin: Vec<u8>,
    /// Kill the process group after this long.
    pub timeout: Option<Duration>,
    /// Run as this user instead of the sandbox's default.
    pub user: Option<String>,
}

/// The result of [`Driver::exec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutcome {
    /// Exit code, or 128+signal.
    pub exit_code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Wall-clock duration.
    pub duration: Duration,
    /// Killed by the timeout.
    pub timed_out: bool,
    /// The sandbox's memory limit made the kernel kill a process while the
    /// command ran.
    pub oom_killed: bool,
}

/// Errors a driver reports. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver does not know this image.
    #[error("unknown image {0:?}")]
    UnknownImage(String),
    /// Setting the sandbox up failed.
    #[error("creating sandbox failed at {step}: {message}")]
    Create {
        /// The step that failed (for example `cgroup`, `overlay mount`).
        step: String,
        /// What the kernel or the helper said.
        message: String,
    },
    /// The sandbox's agent cannot be reached (the sandbox died, or is gone).
    #[error("sandbox agent unavailable: {0}")]
    AgentUnavailable(String),
    /// The operation failed in a way that ended the sandbox: its processes
    /// are gone (for example gVisor stopped the container on a refused
    /// checkpoint). The message says why.
    #[error("the sandbox's processes are gone: {0}")]
    Lost(String),
    /// The agent answered with an error.
    #[error("agent error: {0}")]
    Agent(String),
    /// No process with this pid in the sandbox.
    #[error("no process {0} in this sandbox")]
    ProcessNotFound(i32),
    /// The process was started without stdin.
    #[error("process {0} was started without stdin")]
    NoStdin(i32),
    /// The process has exited (or closed its stdin) and cannot take this.
    #[error("{0}")]
    ProcessNotRunning(String),
    /// The request was invalid (for example a bad signal number).
    #[error("{0}")]
    Invalid(String),
    /// A path (or other named thing) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (a directory where a file was
    /// expected, an existing target, a non-empty directory).
    #[error("{0}")]
    Conflict(String),
    /// The sandbox's own permissions refuse the operation.
    #[error("{0}")]
    PermissionDenied(String),
    /// The sandbox's disk is full.
    #[error("{0}")]
    NoSpace(String),
    /// More data than the configured maximum.
    #[error("{0}")]
    TooLarge(String),
    /// Any other I/O failure on the host.
    #[error("{context}: {source}")]
    Io {
        /// What Warren was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Freezing a sandbox in memory and thawing it again: every process of the
/// sandbox (its agent included) stops being scheduled; memory, open files and
/// connections stay as they are. While a sandbox is paused its agent does not
/// answer, so callers must not send it requests.
#[async_trait]
pub trait Pausable: Send + Sync {
    /// Freezes every process of the sandbox; returns once the kernel reports
    /// them all frozen.
    async fn pause(&self, id: &str) -> Result<(), DriverError>;

    /// Thaws the sandbox; returns once the kernel reports it thawed.
    /// Thawing a sandbox that is not frozen succeeds.
    async fn resume(&self, id: &str) -> Result<(), DriverError>;
}

/// Capturing a sandbox's files as a read-only layer (snapshots, forks).
#[async_trait]
pub trait Snapshottable: Send + Sync {
    /// Copies the sandbox's writable layer into `dest` (which must not
    /// exist; its parent does) as a directory overlayfs can stack as a lower
    /// layer: owners, modes, times, xattrs, whiteouts and opaque directories
    /// are kept. The sandbox is frozen for the copy, so the layer is
    /// consistent, unless `paused` says it already is. Returns the bytes of
    /// file data copied. A failure removes whatever it wrote to `dest`.
    async fn capture_layer(&self, id: &str, dest: &Path, paused: bool) -> Result<u64, DriverError>;
}

/// Suspending a sandbox to disk and starting it again.
#[async_trait]
pub trait Suspending: Send + Sync {
    /// True when a resumed sandbox's processes continue where they were
    /// (memory checkpointed); false when resume starts it again from its files.
    fn preserves_memory(&self) -> bool;

    /// Saves the sandbox (its files, and its memory when the driver can),
    /// then stops every process and frees its memory and cgroups. The files
    /// stay until [`Driver::destroy`].
    async fn suspend(&self, id: &str, info: &RuntimeInfo) -> Result<(), DriverError>;

    /// Starts a suspended sandbox again from what [`Suspending::suspend`]
    /// saved; `spec` is the one it was created with.
    async fn resume_suspended(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError>;
}

/// Forking a running sandbox with its processes' memory.
#[async_trait]
pub trait MemoryForking: Send + Sync {
    /// Checkpoints `parent` (which keeps running) and restores one copy per
    /// spec, each with the parent's memory and its own copy of the parent's
    /// files (stacked on `children[i].snapshot_layers`, which the caller
    /// captured while the parent was frozen). All or nothing: on failure no
    /// child is left behind.
    async fn fork_with_memory(
        &self,
        parent: &str,
        parent_info: &RuntimeInfo,
        children: &[SandboxSpec],
    ) -> Result<Vec<RuntimeInfo>, DriverError>;
}

/// An isolation driver: it creates sandboxes, runs commands in them and
/// destroys them. Optional powers (pause, snapshot, checkpoint) are separate
/// traits.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The driver's name as shown in the API (`namespace`).
    fn name(&self) -> &'static str;

    /// True when `image` can be used with [`Driver::create`].
    fn has_image(&self, image: &str) -> bool;

    /// What this host can give one sandbox (checked against requested limits).
    fn capacity(&self) -> crate::HostCapacity {
        crate::HostCapacity::detect()
    }

    /// Background processes, when this driver can run them.
    fn processes(&self) -> Option<&dyn crate::ProcessControl> {
        None
    }

    /// The file API, when this driver has one.
    fn files(&self) -> Option<&dyn crate::FileControl> {
        None
    }

    /// Freezing and thawing sandboxes in memory, when this driver can.
    fn pausable(&self) -> Option<&dyn Pausable> {
        None
    }

    /// Capturing files as layers (snapshots, forks), when this driver can.
    fn snapshots(&self) -> Option<&dyn Snapshottable> {
        None
    }

    /// Suspend to disk, when this driver can.
    fn suspending(&self) -> Option<&dyn Suspending> {
        None
    }

    /// Forks with memory, when this driver can.
    fn memory_forking(&self) -> Option<&dyn MemoryForking> {
        None
    }

    /// Change listing (`/changes`), when this driver can tell.
    fn changes(&self) -> Option<&dyn crate::ChangeTracking> {
        None
    }

    /// The pid of a process in the sandbox's own network namespace on the
    /// host (`/proc/PID/ns/net`), through which the daemon configures its
    /// network and reaches its ports. `None`: the driver has its own network
    /// stack (gVisor) and Warren's networking does not apply. The pid is
    /// `info`'s process (started at `info.start_time`): callers pair the two
    /// ([`crate::netns::NetnsOwner`]) so that a recycled pid is refused.
    fn network_namespace_pid(&self, _info: &RuntimeInfo) -> Option<i32> {
        None
    }

    /// Creates and starts a sandbox; returns once its agent is ready.
    async fn create(&self, spec: &SandboxSpec) -> Result<RuntimeInfo, DriverError>;

    /// Reconnects to a sandbox that was started by an earlier daemon process.
    /// An error means the sandbox is dead and should be marked failed.
    async fn adopt(&self, id: &str, info: &RuntimeInfo) -> Result<(), DriverError>;

    /// Whether the sandbox's init is still the live process `info` names.
    /// An agent that does not answer while its init lives is busy or out of
    /// resources, not gone.
    fn is_alive(&self, _id: &str, info: &RuntimeInfo) -> bool {
        crate::process_state::is_same_live_process(info.pid, info.start_time)
    }

    /// Runs a command to completion.
    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecOutcome, DriverError>;

    /// Kills every process of the sandbox and removes its cgroups, mounts and
    /// files. Idempotent: destroying a sandbox that is already gone succeeds.
    async fn destroy(&self, id: &str, info: Option<&RuntimeInfo>) -> Result<(), DriverError>;
}
