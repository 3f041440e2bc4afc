use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/sandboxes/{id}/exec`: run one command to completion.
///
/// Exactly one of `cmd` (an argv, run directly) or `shell` (a string run by
/// `/bin/sh -c`) must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
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
    /// Text written to the command's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the command's whole process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run as this user instead of the sandbox's default (`root`, or a name
    /// created on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The outcome of a finished command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The exit code; `128 + N` when killed by signal N, 127 when the program was not found.
    pub exit_code: i32,
    /// Standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error (invalid UTF-8 replaced).
    pub stderr: String,
    /// Wall-clock time from start to exit.
    pub duration_ms: u64,
    /// True when the command was killed because `timeoutMs` ran out.
    pub timed_out: bool,
    /// True when the kernel's OOM killer killed a process of the sandbox
    /// while the command ran (the sandbox hit `memoryMb`).
    #[serde(default)]
    pub oom_killed: bool,
}
