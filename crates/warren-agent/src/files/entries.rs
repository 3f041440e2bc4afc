//! Metadata operations: stat, list, mkdir, rename, remove, and the
//! directory walk the searches and the tar writer share. A walk goes from
//! directory fd to directory fd (`openat(O_NOFOLLOW)` of one name at a
//! time), so it never follows a symlink.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use warren_proto::{EntryKind, FileEntry};

use super::path::{self, Root};
use super::sys;
use super::{os_err, ErrorCode, FileError};

/// Most entries a listing returns.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Pseudo file systems a walk lists but does not descend into (unless the
/// walk starts inside them): reading them is slow, endless or blocking.
const PSEUDO_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

pub fn kind_of(mode: u32) -> EntryKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// The wire form of a `stat`.
pub fn entry_of(path: &str, st: &libc::stat, link_target: Option<String>) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        kind: kind_of(st.st_mode),
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        link_target,
    }
}

/// The entry `name` in `dir`, without following a symlink.
pub fn entry_at(dir: RawFd, name: &CStr, path: &str) -> Result<FileEntry, FileError> {
    let st = sys::lstatat(dir, name).map_err(os_err(path))?;
    let target = if kind_of(st.st_mode) == EntryKind::Symlink {
        sys::readlinkat(dir, name)
            .ok()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
    } else {
        None
    };
    Ok(entry_of(path, &st, target))
}

pub fn stat(root: &Root, path: &str) -> Result<FileEntry, FileError> {
    let path = path::normalize(path)?;
    if path == "/" {
        return entry_at(root.fd(), c"", "/");
    }
    let at = root.locate(&path)?;
    entry_at(at.parent.as_raw_fd(), &at.name, &path)
}

/// Opens the directory `path` for reading; a symlink in the last component
/// is not followed (it is "not a directory").
pub fn open_dir(root: &Root, path: &str) -> Result<OwnedFd, FileError> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    if path == "/" {
        return root.open_path("/", flags);
    }
    let at = root.locate(path)?;
    sys::openat(at.parent.as_raw_fd(), &at.name, flags, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => FileError::new(
            ErrorCode::Conflict,
            format!("not a directory (a symbolic link): {path}"),
        ),
        _ => FileError::os(path, &e),
    })
}

/// What a walk visitor sees.
pub struct Visit<'a> {
    /// The directory holding the entry.
    pub dir: RawFd,
    pub name: &'a CStr,
    /// Absolute path.
    pub path: &'a str,
    /// Path relative to the walk's start.
    pub relative: &'a str,
    pub st: &'a libc::stat,
}

/// Visits every entry below `dir` (`path`), sorted by name within each
/// directory, down to `max_depth` levels (1 = children only). The visitor
/// returns false to stop. Unreadable subdirectories are skipped.
pub fn walk(
    dir: &OwnedFd,
    path: &str,
    max_depth: u32,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<bool, FileError>,
) -> Result<(), FileError> {
    walk_level(dir, path, "", 1, max_depth, false, visit).map(drop)
}

/// Like [`walk`] with no depth limit, but an entry or subdirectory that
/// cannot be read is an error rather than skipped (an entry removed
/// meanwhile is still skipped): for an archive that must be complete.
pub fn walk_all(
    dir: &OwnedFd,
    path: &str,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<bool, FileError>,
) -> Result<(), FileError> {
    walk_level(dir, path, "", 1, u32::MAX, true, visit).map(drop)
}

/// True for the errors a strict walk still skips: the entry went away.
fn vanished(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn walk_level(
    dir: &OwnedFd,
    path: &str,
    relative: &str,
    depth: u32,
    max_depth: u32,
    strict: bool,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<bool, FileError>,
) -> Result<bool, FileError> {
    let mut names = sys::read_dir(dir).map_err(os_err(path))?;
    names.sort();
    for (name, _) in names {
        let shown = String::from_utf8_lossy(name.to_bytes()).into_owned();
        let child_path = path::join(path, &shown);
        let child_rel = if relative.is_empty() {
            shown.clone()
        } else {
            format!("{relative}/{shown}")
        };
        let st = match sys::lstatat(dir.as_raw_fd(), &name) {
            Ok(st) => st,
            Err(e) if strict && !vanished(&e) => return Err(FileError::os(&child_path, &e)),
            Err(_) => continue, // removed meanwhile
        };
        let more = visit(&Visit {
            dir: dir.as_raw_fd(),
            name: &name,
            path: &child_path,
            relative: &child_rel,
            st: &st,
        })?;
        if !more {
            return Ok(false);
        }
        let descend = kind_of(st.st_mode) == EntryKind::Dir
            && depth < max_depth
            && !PSEUDO_DIRS.contains(&child_path.as_str());
        if descend {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let sub = match sys::openat(dir.as_raw_fd(), &name, flags, 0) {
                Ok(sub) => sub,
                Err(e) if strict && !vanished(&e) => return Err(FileError::os(&child_path, &e)),
                Err(_) => continue,
            };
            let deeper = depth + 1;
            if !walk_level(
                &sub,
                &child_path,
                &child_rel,
                deeper,
                max_depth,
                strict,
                visit,
            )? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Entries below the directory `path`, sorted by path; the flag says the
/// listing was cut at [`MAX_LIST_ENTRIES`].
pub fn list(root: &Root, path: &str, depth: u32) -> Result<(Vec<FileEntry>, bool), FileError> {
    let path = path::normalize(path)?;
    let dir = open_dir(root, &path)?;
    let mut entries = Vec::new();
    let mut truncated = false;
    walk(&dir, &path, depth.max(1), &mut |v| {
        if entries.len() >= MAX_LIST_ENTRIES {
            truncated = true;
            return Ok(false);
        }
        let target = (kind_of(v.st.st_mode) == EntryKind::Symlink)
            .then(|| sys::readlinkat(v.dir, v.name).ok())
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        entries.push(entry_of(v.path, v.st, target));
        Ok(true)
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, truncated))
}

pub fn mkdir(root: &Root, path: &str, mode: Option<u32>) -> Result<FileEntry, FileError> {
    let path = path::normalize(path)?;
    root.mkdir_all(&path, mode.unwrap_or(0o755) & 0o7777)?;
    stat(root, &path)
}

pub fn rename(root: &Root, from: &str, to: &str, overwrite: bool) -> Result<FileEntry, FileError> {
    let (from, to) = (path::normalize(from)?, path::normalize(to)?);
    if from == "/" || to == "/" {
        return Err(FileError::invalid("cannot rename / or rename onto /"));
    }
    let src = root.locate(&from)?;
    sys::lstatat(src.parent.as_raw_fd(), &src.name).map_err(os_err(&from))?;
    if from == to {
        return stat(root, &to);
    }
    let (to_dir, to_name) = path::split(&to);
    let dst_parent = root.mkdir_all(to_dir, 0o755)?;
    let dst_name = path::cstring(to_name)?;
    let flags = if overwrite { 0 } else { libc::RENAME_NOREPLACE };
    sys::renameat2(
        src.parent.as_raw_fd(),
        &src.name,
        dst_parent.as_raw_fd(),
        &dst_name,
        flags,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EXDEV) => {
            FileError::invalid(format!("cannot rename across file systems: {from} -> {to}"))
        }
        Some(libc::EINVAL) => FileError::invalid(format!(
            "cannot move a directory into itself: {from} -> {to}"
        )),
        Some(libc::ENOENT) => FileError::os(&from, &e),
        _ => FileError::os(&to, &e),
    })?;
    entry_at(dst_parent.as_raw_fd(), &dst_name, &to)
}

pub fn remove(root: &Root, path: &str, recursive: bool) -> Result<(), FileError> {
    let path = path::normalize(path)?;
    if path == "/" {
        return Err(FileError::invalid("refusing to remove /"));
    }
    let at = root.locate(&path)?;
    let st = sys::lstatat(at.parent.as_raw_fd(), &at.name).map_err(os_err(&path))?;
    if kind_of(st.st_mode) != EntryKind::Dir {
        return sys::unlinkat(at.parent.as_raw_fd(), &at.name, 0).map_err(os_err(&path));
    }
    if recursive {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let dir = sys::openat(at.parent.as_raw_fd(), &at.name, flags, 0).map_err(os_err(&path))?;
        remove_contents(&dir, &path)?;
    }
    sys::unlinkat(at.parent.as_raw_fd(), &at.name, libc::AT_REMOVEDIR).map_err(os_err(&path))
}

fn remove_contents(dir: &OwnedFd, path: &str) -> Result<(), FileError> {
    for (name, _) in sys::read_dir(dir).map_err(os_err(path))? {
        let child = path::join(path, &String::from_utf8_lossy(name.to_bytes()));
        let st = match sys::lstatat(dir.as_raw_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(FileError::os(&child, &e)),
        };
        if kind_of(st.st_mode) == EntryKind::Dir {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let sub = sys::openat(dir.as_raw_fd(), &name, flags, 0).map_err(os_err(&child))?;
            remove_contents(&sub, &child)?;
            sys::unlinkat(dir.as_raw_fd(), &name, libc::AT_REMOVEDIR).map_err(os_err(&child))?;
        } else {
            sys::unlinkat(dir.as_raw_fd(), &name, 0).map_err(os_err(&child))?;
        }
    }
    Ok(())
}
