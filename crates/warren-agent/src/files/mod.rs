//! The file API inside the sandbox (protocol v5).
//!
//! Each file request arrives on its own connection and is served on that
//! connection's thread, which first takes the file-system identity of the
//! requesting user (raw per-thread `setfsuid`/`setfsgid`/`setgroups`), so the
//! kernel checks permissions as that user and what it creates is theirs.
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` from the sandbox root, and the work is done on
//! file descriptors (`*at` calls relative to an opened parent), so a symlink
//! swapped in between a check and its use cannot lead anywhere else.

mod archive;
mod entries;
mod glob;
mod path;
mod search;
mod sys;
mod transfer;
mod watch;

pub(crate) use sys::enable_openat2_emulation;

use std::io::BufReader;
use std::os::unix::net::UnixStream;

use warren_proto::{write_frame, Frame};

use crate::users;

/// Answers of file handlers go here; raw data follows on the same socket.
pub type Conn = BufReader<UnixStream>;

/// Machine-readable cause of a failed file request (the `code` of `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    Conflict,
    PermissionDenied,
    NoSpace,
    TooLarge,
    Invalid,
    Io,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::PermissionDenied => "permission_denied",
            Self::NoSpace => "no_space",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::Io => "io",
        }
    }
}

/// A failed file request: what the daemon gets as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub code: ErrorCode,
    pub message: String,
}

impl FileError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// The error of a failed syscall on `path`, named like
    /// `no such file or directory: /workspace/a.txt`.
    pub fn os(path: &str, err: &std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => from_errno(errno, path),
            None => Self::new(ErrorCode::Io, format!("{err}: {path}")),
        }
    }
}

/// `map_err` helper: `FileError::os` for `path`.
pub fn os_err(path: &str) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |e| FileError::os(path, &e)
}

/// Maps an errno onto an error code and a message naming `path`.
pub fn from_errno(errno: i32, path: &str) -> FileError {
    use ErrorCode::*;
    let (code, what) = match errno {
        libc::ENOENT => (NotFound, "no such file or directory"),
        libc::EISDIR => (Conflict, "is a directory"),
        libc::ENOTDIR => (Conflict, "not a directory"),
        libc::EEXIST => (Conflict, "already exists"),
        libc::ENOTEMPTY => (Conflict, "directory not empty"),
        libc::EBUSY => (Conflict, "resource busy (a mount point?)"),
        libc::ETXTBSY => (Conflict, "text file busy"),
        libc::EACCES | libc::EPERM => (PermissionDenied, "permission denied"),
        libc::EROFS => (PermissionDenied, "read-only file system"),
        libc::ENOSPC => (NoSpace, "no space left on device"),
        libc::EDQUOT => (NoSpace, "disk quota exceeded"),
        libc::EFBIG => (TooLarge, "file too large"),
        libc::ELOOP => (
            PermissionDenied,
            "refused to follow a symbolic link here (a /proc magic link, or a link inside an upload)",
        ),
        libc::EXDEV => (
            PermissionDenied,
            "path leaves the directory it must stay in",
        ),
        libc::ENAMETOOLONG => (Invalid, "file name too long"),
        libc::EINVAL => (Invalid, "invalid argument"),
        _ => {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            return FileError::new(Io, format!("{text}: {path}"));
        }
    };
    FileError::new(code, format!("{what}: {path}"))
}

/// True for the frames this module serves.
pub fn is_request(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::FileStat(_)
            | Frame::FileList(_)
            | Frame::FileRead(_)
            | Frame::FileWrite(_)
            | Frame::FileMkdir(_)
            | Frame::FileRename(_)
            | Frame::FileRemove(_)
            | Frame::FileFind(_)
            | Frame::FileGrep(_)
            | Frame::TarDownload(_)
            | Frame::TarUpload(_)
            | Frame::FileWatch(_)
    )
}

fn stream_and_user(frame: &Frame) -> (u64, Option<&str>) {
    let (stream, user) = match frame {
        Frame::FileStat(r) | Frame::TarDownload(r) => (r.stream, &r.user),
        Frame::FileList(r) => (r.stream, &r.user),
        Frame::FileRead(r) => (r.stream, &r.user),
        Frame::FileWrite(r) => (r.stream, &r.user),
        Frame::FileMkdir(r) => (r.stream, &r.user),
        Frame::FileRename(r) => (r.stream, &r.user),
        Frame::FileRemove(r) => (r.stream, &r.user),
        Frame::FileFind(r) => (r.stream, &r.user),
        Frame::FileGrep(r) => (r.stream, &r.user),
        Frame::TarUpload(r) => (r.stream, &r.user),
        Frame::FileWatch(r) => (r.stream, &r.user),
        _ => (0, &None),
    };
    (stream, user.as_deref())
}

/// Sends one frame on the connection; a failure means the daemon left.
pub fn send(conn: &Conn, frame: &Frame) -> std::io::Result<()> {
    let mut w = conn.get_ref();
    write_frame(&mut w, frame).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Serves one file request on `conn`, as the request's user or the
/// sandbox's `default_user`. The connection is done afterwards: this thread
/// has changed its file-system identity, so it must not serve anything else.
pub fn serve(frame: Frame, default_user: Option<&str>, conn: &mut Conn) {
    let (stream, user) = stream_and_user(&frame);
    let user = user.or(default_user).unwrap_or("root").to_string();
    let result = become_user(&user).and_then(|()| dispatch(frame, stream, conn));
    let answer = match result {
        Ok(Some(answer)) => answer,
        Ok(None) => return,
        Err(e) => Frame::Error {
            stream: Some(stream),
            message: e.message,
            code: Some(e.code.as_str().into()),
        },
    };
    let _ = send(conn, &answer);
}

/// Takes `user`'s file-system identity on this thread.
fn become_user(user: &str) -> Result<(), FileError> {
    let account = users::resolve_or_create(user)
        .map_err(|e| FileError::invalid(format!("user {user}: {e}")))?;
    if account.uid == 0 {
        return Ok(());
    }
    let groups = supplementary_groups(
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
        &account.name,
        account.gid,
    );
    sys::set_thread_fs_identity(account.uid, account.gid, &groups)
        .map_err(|e| FileError::new(ErrorCode::Io, format!("become user {user}: {e}")))
}

/// The primary group plus every group of /etc/group listing `name`.
fn supplementary_groups(group_file: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in group_file.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name) {
            if let Ok(gid) = f[2].parse::<u32>() {
                if !groups.contains(&gid) {
                    groups.push(gid);
                }
            }
        }
    }
    groups
}

/// Runs one request. `Ok(None)`: the handler answered (or the daemon left).
fn dispatch(frame: Frame, stream: u64, conn: &mut Conn) -> Result<Option<Frame>, FileError> {
    let root = path::Root::open()?;
    let info = |entry| Some(Frame::FileInfo { stream, entry });
    match frame {
        Frame::FileStat(r) => entries::stat(&root, &r.path).map(info),
        Frame::FileList(r) => {
            let (entries, truncated) = entries::list(&root, &r.path, r.depth)?;
            Ok(Some(Frame::FileEntries {
                stream,
                entries,
                truncated,
            }))
        }
        Frame::FileMkdir(r) => entries::mkdir(&root, &r.path, r.mode).map(info),
        Frame::FileRename(r) => entries::rename(&root, &r.from, &r.to, r.overwrite).map(info),
        Frame::FileRemove(r) => {
            entries::remove(&root, &r.path, r.recursive)?;
            Ok(Some(Frame::Ack { stream }))
        }
        Frame::FileFind(r) => {
            let (entries, truncated) = search::find(&root, &r.root, &r.glob, r.max_results)?;
            Ok(Some(Frame::FileEntries {
                stream,
                entries,
                truncated,
            }))
        }
        Frame::FileGrep(r) => {
            let (matches, truncated) = search::grep(&root, &r)?;
            Ok(Some(Frame::GrepMatches {
                stream,
                matches,
                truncated,
            }))
        }
        Frame::FileRead(r) => transfer::read(&root, &r, conn).map(|()| None),
        Frame::FileWrite(r) => transfer::write(&root, &r, conn),
        Frame::TarDownload(r) => archive::download(&root, &r, conn).map(|()| None),
        Frame::TarUpload(r) => archive::upload(&root, &r, conn),
        Frame::FileWatch(r) => watch::watch(&root, &r, conn).map(|()| None),
        other => Err(FileError::invalid(format!("not a file request: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_codes_and_messages_name_the_path() {
        let e = from_errno(libc::ENOENT, "/workspace/a.txt");
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no such file or directory: /workspace/a.txt");
        for (errno, code) in [
            (libc::EISDIR, ErrorCode::Conflict),
            (libc::ENOTDIR, ErrorCode::Conflict),
            (libc::EEXIST, ErrorCode::Conflict),
            (libc::ENOTEMPTY, ErrorCode::Conflict),
            (libc::EACCES, ErrorCode::PermissionDenied),
            (libc::EPERM, ErrorCode::PermissionDenied),
            (libc::EROFS, ErrorCode::PermissionDenied),
            (libc::ENOSPC, ErrorCode::NoSpace),
            (libc::EDQUOT, ErrorCode::NoSpace),
            (libc::ELOOP, ErrorCode::PermissionDenied),
            (libc::EXDEV, ErrorCode::PermissionDenied),
            (libc::ENAMETOOLONG, ErrorCode::Invalid),
            (libc::EIO, ErrorCode::Io),
        ] {
            let e = from_errno(errno, "/p");
            assert_eq!(e.code, code, "errno {errno}");
            assert!(e.message.ends_with(": /p"), "{}", e.message);
        }
    }

    #[test]
    fn groups_include_the_primary_and_memberships() {
        let group = "root:x:0:\nstaff:x:50:bob,alice\nalice:x:1000:\nweird\ndocker:x:999: alice\n";
        assert_eq!(
            supplementary_groups(group, "alice", 1000),
            vec![1000, 50, 999]
        );
        assert_eq!(supplementary_groups(group, "carol", 7), vec![7]);
    }
}
