use serde::{Deserialize, Serialize};

use crate::files::{
    FileChange, FileEntry, FileFindRequest, FileGrepRequest, FileListRequest, FileMkdirRequest,
    FilePathRequest, FileReadRequest, FileRemoveRequest, FileRenameRequest, FileWatchRequest,
    FileWriteRequest, GrepLine, TarUploadRequest,
};

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
    /// A request could not be handled at all (bad frame, unsupported type),
    /// or a process request failed.
    Error {
        /// The stream the error belongs to, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<u64>,
        /// What went wrong.
        #[serde(default)]
        message: String,
        /// Machine-readable cause for process requests: `not_found` (no such
        /// pid), `no_stdin` (started without stdin), `not_running` (already
        /// exited), `invalid` (bad argument), `spawn` (could not start).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Daemon → agent: start a background process (v3).
    Spawn(SpawnRequest),
    /// Agent → daemon: the process of a `spawn` started.
    Spawned {
        /// Stream id of the `spawn`.
        #[serde(default)]
        stream: u64,
        /// Its pid inside the sandbox.
        #[serde(default)]
        pid: i32,
    },
    /// Daemon → agent: stream a process's output from byte offset `from`
    /// (across stdout and stderr). The agent answers `ack`, then replays what
    /// it kept (`dropped` first when `from` is older than the oldest kept
    /// byte), then pushes live `output` until `exited`.
    ProcessOutputRequest {
        /// Stream id of this subscription.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// First byte offset wanted.
        #[serde(default)]
        from: u64,
        /// Stop after the replay with `output_end` instead of following.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_follow: bool,
    },
    /// Agent → daemon: one chunk of a subscribed process's output.
    Output(OutputChunk),
    /// Agent → daemon: `count` bytes before the oldest kept byte were lost
    /// because the process's output buffer overflowed.
    Dropped {
        /// Subscription stream id.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// Bytes lost between the requested offset and the oldest kept one.
        #[serde(default)]
        count: u64,
    },
    /// Agent → daemon: a subscribed process exited; last frame of the subscription.
    Exited {
        /// Subscription stream id.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// Exit code, or 128 + signal number.
        #[serde(default)]
        exit_code: i32,
        /// True when the timeout killed the process group.
        #[serde(default)]
        timed_out: bool,
    },
    /// Agent → daemon: end of a `no_follow` replay of a running process.
    OutputEnd {
        /// Subscription stream id.
        #[serde(default)]
        stream: u64,
        /// Offset after the last byte sent.
        #[serde(default)]
        offset: u64,
    },
    /// Daemon → agent: stop a subscription (the reader went away).
    Cancel {
        /// Subscription stream id.
        #[serde(default)]
        stream: u64,
    },
    /// Daemon → agent: write to (and/or close) a process's stdin; answered `ack`.
    Stdin {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// Bytes to write.
        #[serde(
            default,
            with = "crate::bytes_b64",
            skip_serializing_if = "Vec::is_empty"
        )]
        data: Vec<u8>,
        /// Close stdin after writing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        close: bool,
    },
    /// Daemon → agent: send a signal to a process's group; answered `ack`.
    Signal {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// Signal number.
        #[serde(default)]
        signal: i32,
    },
    /// Agent → daemon: a `stdin`, `signal` or subscription request succeeded.
    Ack {
        /// Stream id.
        #[serde(default)]
        stream: u64,
    },
    /// Daemon → agent: set the window size of a pty process (v4); answered `ack`.
    Resize {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// The process.
        #[serde(default)]
        pid: i32,
        /// Columns.
        #[serde(default)]
        cols: u16,
        /// Rows.
        #[serde(default)]
        rows: u16,
    },
    /// Daemon → agent: list running and recently finished processes.
    ListProcesses {
        /// Stream id.
        #[serde(default)]
        stream: u64,
    },
    /// Agent → daemon: the answer to `list_processes`.
    ProcessList {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// Processes, oldest first.
        #[serde(default)]
        entries: Vec<ProcessEntry>,
    },
    /// Daemon → agent: metadata of one entry (v5); answered `file_info`.
    FileStat(FilePathRequest),
    /// Daemon → agent: entries of a directory (v5); answered `file_entries`.
    FileList(FileListRequest),
    /// Daemon → agent: read a file (v5); `file_info`, then raw bytes.
    FileRead(FileReadRequest),
    /// Daemon → agent: write a file from the chunks that follow (v5);
    /// answered `file_info`.
    FileWrite(FileWriteRequest),
    /// Daemon → agent: `mkdir -p` (v5); answered `file_info`.
    FileMkdir(FileMkdirRequest),
    /// Daemon → agent: rename (v5); answered `file_info` (the new entry).
    FileRename(FileRenameRequest),
    /// Daemon → agent: remove (v5); answered `ack`.
    FileRemove(FileRemoveRequest),
    /// Daemon → agent: find by glob (v5); answered `file_entries`.
    FileFind(FileFindRequest),
    /// Daemon → agent: search contents (v5); answered `grep_matches`.
    FileGrep(FileGrepRequest),
    /// Daemon → agent: tar of a path (v5); `ack`, then the raw archive.
    TarDownload(FilePathRequest),
    /// Daemon → agent: unpack the chunked tar that follows (v5); answered
    /// `tar_unpacked`.
    TarUpload(TarUploadRequest),
    /// Daemon → agent: watch for changes (v5); `ack`, then `file_changed`
    /// frames until the daemon closes the connection.
    FileWatch(FileWatchRequest),
    /// Agent → daemon: one entry's metadata.
    FileInfo {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// The entry.
        #[serde(default)]
        entry: FileEntry,
    },
    /// Agent → daemon: the answer to `file_list` and `file_find`.
    FileEntries {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// Entries.
        #[serde(default)]
        entries: Vec<FileEntry>,
        /// A cap was reached; there may be more.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Agent → daemon: the answer to `file_grep`.
    GrepMatches {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// Matching lines in walk order.
        #[serde(default)]
        matches: Vec<GrepLine>,
        /// The cap was reached; there may be more.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Agent → daemon: the answer to `tar_upload`.
    TarUnpacked {
        /// Stream id.
        #[serde(default)]
        stream: u64,
        /// Entries written.
        #[serde(default)]
        entries: u64,
        /// Bytes of file content written.
        #[serde(default)]
        bytes: u64,
    },
    /// Agent → daemon: one change seen by a `file_watch`.
    FileChanged(FileChange),
}

/// Start `argv` in the background (its own process group).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpawnRequest {
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
    /// Run as this user (`root` when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Keep stdin open as a pipe for `stdin` frames (else /dev/null).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Kill the whole process group after this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Free-form label shown in the process list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Output buffer size in bytes (agent default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// Run under a pseudo-terminal of this size (v4): stdin, stdout and
    /// stderr are its slave; output arrives as fd 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// A terminal window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputChunk {
    /// Subscription stream id.
    pub stream: u64,
    /// The process.
    pub pid: i32,
    /// 1 = stdout, 2 = stderr.
    pub fd: u8,
    /// Byte offset of the chunk's first byte, counted across both streams.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "crate::bytes_b64")]
    pub data: Vec<u8>,
}

/// One process in a `process_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessEntry {
    /// Pid inside the sandbox.
    pub pid: i32,
    /// The tag given at spawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Still running.
    pub running: bool,
    /// Exit code once exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// True when the timeout killed it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Whether stdin is a pipe the daemon can write to.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Start time, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// End time, milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Offset after the last output byte so far.
    pub output_bytes: u64,
    /// Runs under a pseudo-terminal (v4).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pty: bool,
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
