//! Types of the file API (`/v1/sandboxes/{id}/files…`) and of `/changes`.
//!
//! Every path is an absolute path inside the sandbox (at most 4096 bytes, no
//! NUL). Paths are resolved inside the sandbox's root by its agent: `..`,
//! absolute symlinks and `/proc/…/root` never lead out of it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest path accepted anywhere in the file API, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Deepest `depth` of `GET …/files/list`.
pub const MAX_LIST_DEPTH: u32 = 32;
/// Default `limit` of `find` and `grep`.
pub const DEFAULT_SEARCH_LIMIT: u32 = 1000;
/// Largest `limit` of `find` and `grep`.
pub const MAX_SEARCH_LIMIT: u32 = 10_000;

/// Kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by `stat` or listings).
    Symlink,
    /// A device, fifo or socket.
    Other,
}

impl FileKind {
    /// The lowercase name used in JSON (`file`, `dir`, `symlink`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Other => "other",
        }
    }
}

/// Metadata of one entry, as `GET …/files/stat` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Kind of entry.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits as a number (`420` is `0o644`).
    pub mode: u32,
    /// Owner uid inside the sandbox.
    pub uid: u32,
    /// Owner gid inside the sandbox.
    pub gid: u32,
    /// Modification time in seconds since the Unix epoch (UTC).
    pub mtime: i64,
    /// Target of a symlink, as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// `GET …/files/exists`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileExists {
    /// True when something is at the path (a dangling symlink counts).
    pub exists: bool,
    /// What is there, when something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FileKind>,
}

/// `GET …/files/list`: entries sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    /// The entries (not the directory itself).
    pub entries: Vec<FileStat>,
}

/// `POST …/files/mkdir`: create a directory and its missing parents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MkdirRequest {
    /// Absolute path of the directory.
    pub path: String,
    /// Permission bits of the directories created, as a number (`493` is
    /// `0o755`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `POST …/files/move`: rename a file or directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MoveRequest {
    /// Absolute path of the entry to move.
    pub from: String,
    /// Absolute path it gets (missing parents are created).
    pub to: String,
    /// Replace an existing `to` (default false: 409 when it exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
}

/// `GET …/files/find`: entries whose path matches a glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindResult {
    /// Matching entries, in walk order.
    pub items: Vec<FileStat>,
    /// The limit was reached; there may be more.
    pub truncated: bool,
}

/// One line that matched a `grep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrepMatch {
    /// The file.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The line without its newline, cut to 1000 bytes.
    pub text: String,
}

/// `GET …/files/grep`: lines matching a regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrepResult {
    /// Matching lines, in walk order.
    pub matches: Vec<GrepMatch>,
    /// The limit was reached; there may be more.
    pub truncated: bool,
}

/// `PUT …/files/tar`: what was unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TarUploadResult {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Kind of a file watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatchEventKind {
    /// Created.
    Created,
    /// Written and closed, or attributes changed.
    Modified,
    /// Deleted.
    Deleted,
    /// Renamed: `path` is the new name, `from` the old one.
    Renamed,
    /// Events were lost (the kernel's queue overflowed); rescan.
    Overflow,
}

impl WatchEventKind {
    /// The lowercase name used in JSON and as the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
            Self::Renamed => "renamed",
            Self::Overflow => "overflow",
        }
    }
}

/// One event of `GET …/files/watch` (the `data` of each server-sent event;
/// the SSE event name is the kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchEventKind,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Old path of a rename, when both ends were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The entry is a directory.
    pub is_dir: bool,
}

/// How a path differs from the sandbox's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Not in the image.
    Added,
    /// Replaces an entry of the image (content, mode or owner).
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeKind {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileChange {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Size of a regular file in bytes (0 otherwise and for deletions).
    pub size: u64,
    /// The entry is a directory.
    pub is_dir: bool,
}

/// `GET …/changes`: every path the sandbox changed, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeList {
    /// The changes.
    pub changes: Vec<FileChange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_camel_case_with_lowercase_kind() {
        let stat = FileStat {
            path: "/l".into(),
            kind: FileKind::Symlink,
            size: 3,
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link_target: Some("/x".into()),
        };
        let json = serde_json::to_value(&stat).unwrap_or_default();
        assert_eq!(json["kind"], "symlink");
        assert_eq!(json["linkTarget"], "/x");
        assert_eq!(json["mode"], 511);
    }

    #[test]
    fn requests_reject_unknown_fields() {
        assert!(
            serde_json::from_str::<MoveRequest>(r#"{"from":"/a","to":"/b","force":true}"#).is_err()
        );
        assert!(serde_json::from_str::<MkdirRequest>(r#"{"path":"/a","mode":448}"#).is_ok());
    }

    #[test]
    fn watch_event_omits_absent_from() {
        let event = WatchEvent {
            kind: WatchEventKind::Created,
            path: "/w/a".into(),
            from: None,
            is_dir: false,
        };
        let text = serde_json::to_string(&event).unwrap_or_default();
        assert_eq!(text, r#"{"kind":"created","path":"/w/a","isDir":false}"#);
    }
}
