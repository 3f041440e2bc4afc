use serde::{Deserialize, Serialize};

/// One message between the daemon and an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// First frame in both directions: the sender's protocol version.
    Hello {
        /// Protocol version of the sender.
        #[serde(default)]
        version: u32,
        /// Free-form build description of the sender.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        software: Option<String>,
    },
    /// Daemon → agent: run a command to completion.
    Exec(ExecRequest),
    /// Agent → daemon: a command finished.
    ExecDone(ExecDone),
    /// Liveness probe; answered with `Pong` on the same stream.
    Ping {
        /// Stream id.
        #[serde(default)]
        stream: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// Stream id.
        #[serde(default)]
        stream: u64,
    },
    /// A request could not be handled at all (bad frame, unsupported type).
    Error {
        /// The stream the error belongs to, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<u64>,
        /// What went wrong.
        #[serde(default)]
        message: String,
    },
}

/// Run `argv` to completion and report its output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// Stream id chosen by the daemon; the answer carries it back.
    pub stream: u64,
    /// Program and arguments; `argv[0]` is looked up in PATH.
    pub argv: Vec<String>,
    /// Working directory; the agent's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment on top of the sandbox's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Bytes written to stdin, which is then closed.
    #[serde(with = "crate::bytes_b64", skip_serializing_if = "Vec::is_empty")]
    pub stdin: Vec<u8>,
    /// Kill the whole process group after this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run as this user (`root` when absent); created when the image lacks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The outcome of an [`ExecRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecDone {
    /// The request's stream id.
    pub stream: u64,
    /// Exit code, or 128 + signal number.
    pub exit_code: i32,
    /// Captured standard output.
    #[serde(with = "crate::bytes_b64")]
    pub stdout: Vec<u8>,
    /// Captured standard error.
    #[serde(with = "crate::bytes_b64")]
    pub stderr: Vec<u8>,
    /// Wall-clock milliseconds from spawn to exit.
    pub duration_ms: u64,
    /// True when the timeout killed the process group.
    pub timed_out: bool,
}
