//! Background processes: the optional [`ProcessControl`] capability.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::driver::DriverError;

/// A process to start in the background.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpawnSpec {
    /// Program and arguments (`argv[0]` is looked up in PATH).
    pub argv: Vec<String>,
    /// Working directory; `None` means the sandbox's workdir.
    pub cwd: Option<String>,
    /// Environment added on top of the sandbox's.
    pub env: Vec<(String, String)>,
    /// Run as this user instead of the sandbox's default.
    pub user: Option<String>,
    /// Keep stdin open as a pipe (else it reads /dev/null).
    pub stdin: bool,
    /// Kill the process group after this long.
    pub timeout: Option<Duration>,
    /// Free-form label shown in listings.
    pub tag: Option<String>,
    /// Output buffer size in bytes; `None`: the agent's default (4 MiB).
    pub buffer_bytes: Option<u64>,
    /// Run under a pseudo-terminal of (cols, rows); stdin is then always open
    /// and all output arrives as fd 1.
    pub pty: Option<(u16, u16)>,
}

/// What the sandbox knows about one process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    /// Pid inside the sandbox.
    pub pid: i32,
    /// The tag given at start.
    pub tag: Option<String>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Still running.
    pub running: bool,
    /// Exit code (or 128 + signal) once exited.
    pub exit_code: Option<i32>,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Started with a writable stdin.
    pub stdin: bool,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
    /// End time, ms since the Unix epoch.
    pub ended_ms: Option<u64>,
    /// Output bytes produced so far (the offset after the last byte).
    pub output_bytes: u64,
    /// Runs under a pseudo-terminal.
    pub pty: bool,
}

/// One event of a process's output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A chunk of stdout (`fd` 1) or stderr (`fd` 2) starting at byte `offset`
    /// (counted across both streams).
    Output {
        /// 1 or 2.
        fd: u8,
        /// Offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `count` bytes after the requested offset were lost to buffer overflow;
    /// the next output starts at the requested offset + `count`.
    Dropped {
        /// Lost bytes.
        count: u64,
    },
    /// End of a non-following read of a running process.
    End {
        /// Offset after the last byte sent.
        offset: u64,
    },
    /// The process exited; the last event.
    Exited {
        /// Exit code, or 128 + signal.
        exit_code: i32,
        /// Killed by its timeout.
        timed_out: bool,
    },
}

/// Drivers that can run background processes with streamed output, stdin
/// and signals. Pids are the sandbox's own.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    /// Starts a process; it keeps running after this returns.
    async fn spawn(&self, id: &str, spec: SpawnSpec) -> Result<ProcessInfo, DriverError>;

    /// Running and recently finished processes, oldest first.
    async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, DriverError>;

    /// The output of `pid` from byte offset `from`: the kept history, then
    /// (with `follow`) live output until [`ProcessEvent::Exited`]. The channel
    /// closes early if the receiver falls far behind; resume from the last
    /// offset seen.
    async fn subscribe_output(
        &self,
        id: &str,
        pid: i32,
        from: u64,
        follow: bool,
    ) -> Result<mpsc::Receiver<ProcessEvent>, DriverError>;

    /// Writes to the process's stdin, then closes it when `close`.
    async fn write_stdin(
        &self,
        id: &str,
        pid: i32,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), DriverError>;

    /// Sends a signal (by number) to the process's group.
    async fn signal(&self, id: &str, pid: i32, signal: i32) -> Result<(), DriverError>;

    /// Sets the window size of a pty process; [`DriverError::ProcessNotRunning`]
    /// when it has no pty or has exited.
    async fn resize(&self, id: &str, pid: i32, cols: u16, rows: u16) -> Result<(), DriverError>;
}
