use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Signal names accepted by `POST /v1/sandboxes/{id}/processes/{pid}/signal`.
pub const SIGNAL_NAMES: [&str; 9] = [
    "SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT", "SIGSTOP",
];

/// `POST /v1/sandboxes/{id}/processes`: start a background process.
///
/// Exactly one of `cmd` (an argv, run directly) or `shell` (a string run by
/// `/bin/sh -c`) must be given. The process keeps running after the call
/// returns; read its output from `GET …/processes/{pid}/output`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartProcessRequest {
    /// The program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// A shell command line, run with `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Working directory inside the sandbox; defaults to the sandbox's workdir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables, on top of the sandbox's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Run as this user instead of the sandbox's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Keep the process's stdin open for `POST …/stdin` (default: stdin is
    /// /dev/null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Kill the process's whole group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A free-form label shown in the process list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Run under a pseudo-terminal of this size: the process gets it as its
    /// controlling terminal (stdin, stdout, stderr), stdin is always open and
    /// all output arrives as fd 1. Resize with `POST …/resize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// A terminal window size; also the body of `POST …/processes/{pid}/resize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PtySize {
    /// Columns (1..=1000).
    pub cols: u16,
    /// Rows (1..=1000).
    pub rows: u16,
}

/// A text (JSON) message from the client on `GET …/attach` (WebSocket).
/// Binary messages are stdin bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttachControl {
    /// Set the pty's window size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Send a signal, by name, to the process's group.
    Signal {
        /// For example `SIGINT`.
        signal: String,
    },
    /// Close stdin (for a pty: type end-of-file, ^D).
    CloseStdin,
}

/// A text (JSON) message from the server on `GET …/attach` (WebSocket).
/// Binary messages are output bytes: everything of a pty process, stdout of
/// others; stderr of a non-pty process comes as an `output` text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AttachEvent {
    /// Output on a fd other than 1 (stderr of a non-pty process).
    #[serde(rename_all = "camelCase")]
    Output {
        /// 2 for stderr.
        fd: u8,
        /// The bytes, base64 (standard alphabet, padded).
        base64: String,
    },
    /// Bytes lost because this reader fell behind the process's buffer.
    Dropped {
        /// Number of bytes lost.
        bytes: u64,
    },
    /// A request on this socket failed; the socket stays open.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The process exited; the server closes the socket next.
    #[serde(rename_all = "camelCase")]
    Exit {
        /// Exit code; `128 + N` when killed by signal N.
        exit_code: i32,
        /// True when `timeoutMs` ran out.
        timed_out: bool,
    },
}

/// A process in a sandbox: running, or recently finished (the last 64
/// finished processes are kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Pid inside the sandbox.
    pub pid: i32,
    /// The tag given at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// `running` or `exited`.
    pub status: String,
    /// Exit code once exited; `128 + N` when killed by signal N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// True when `timeoutMs` ran out and the process group was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// True when the process takes input through `POST …/stdin`.
    #[serde(default)]
    pub stdin: bool,
    /// True when the process runs under a pseudo-terminal.
    #[serde(default)]
    pub pty: bool,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// End time, RFC 3339, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Bytes of output (stdout and stderr together) produced so far; the
    /// `id` of the last output event.
    #[serde(default)]
    pub output_bytes: u64,
}

/// `GET /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessList {
    /// Processes, oldest first.
    pub processes: Vec<Process>,
}

/// `POST /v1/sandboxes/{id}/processes/{pid}/stdin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdinRequest {
    /// Text to write (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Close stdin after writing (the process then reads end-of-file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
}

/// `POST /v1/sandboxes/{id}/processes/{pid}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalRequest {
    /// One of SIGTERM, SIGINT, SIGKILL, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
    /// SIGCONT, SIGSTOP. It goes to the process's whole group.
    pub signal: String,
}

/// Data of the `stdout` and `stderr` events of `GET …/output` (SSE). The
/// event's `id` is the byte offset after this chunk (counted across stdout
/// and stderr); send it back as `Last-Event-ID` to resume exactly there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputEventData {
    /// 1 for stdout, 2 for stderr.
    pub fd: u8,
    /// Byte offset of the chunk's first byte.
    pub offset: u64,
    /// The chunk as text (invalid UTF-8, including a character split across
    /// chunks, becomes U+FFFD).
    pub text: String,
    /// The exact bytes, base64 (standard alphabet, padded).
    pub base64: String,
}

/// Data of the `dropped` event: output lost because the process's buffer
/// (4 MiB) overflowed before it was read. The event's `id` is the offset
/// where output resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DroppedEventData {
    /// Number of bytes lost.
    pub bytes: u64,
}

/// Data of the final `exit` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExitEventData {
    /// Exit code; `128 + N` when killed by signal N.
    pub exit_code: i32,
    /// True when `timeoutMs` ran out.
    pub timed_out: bool,
}
