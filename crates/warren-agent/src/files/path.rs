//! Sandbox paths: lexical normalization, then resolution from the sandbox
//! root with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..`,
//! absolute symlinks and `/proc/*/root` links cannot leave the root.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::sys;
use super::{os_err, FileError};

/// How every user path is resolved.
pub const RESOLVE_IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
/// How paths inside an upload are resolved below its directory: no symlink
/// at all, so an archive cannot write through a link it planted.
pub const RESOLVE_BENEATH_NO_LINKS: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// Checks that `path` is absolute and NUL-free, and removes `.`, `..` (never
/// above `/`) and repeated slashes.
pub fn normalize(path: &str) -> Result<String, FileError> {
    if path.contains('\0') {
        return Err(FileError::invalid(format!(
            "path contains a NUL byte: {:?}",
            path.replace('\0', "\\0")
        )));
    }
    if !path.starts_with('/') {
        return Err(FileError::invalid(format!(
            "path must be absolute: {path:?}"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `dir/name` for a normalized `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Splits a normalized path other than `/` into its parent and last name.
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

pub fn cstring(s: &str) -> Result<CString, FileError> {
    CString::new(s).map_err(|_| FileError::invalid(format!("path contains a NUL byte: {s:?}")))
}

/// The sandbox root, opened once per request.
pub struct Root {
    fd: OwnedFd,
}

/// A path whose parent directory is open: operate with `*at(parent, name)`
/// so the last component is never followed.
pub struct Located {
    pub parent: OwnedFd,
    pub name: CString,
}

impl Root {
    pub fn open() -> Result<Self, FileError> {
        let fd = sys::openat(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(os_err("/"))?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens a normalized path inside the root (symlinks followed, in root).
    pub fn open_path(&self, path: &str, flags: libc::c_int) -> Result<OwnedFd, FileError> {
        let c = cstring(path)?;
        sys::openat2(self.fd(), &c, flags, 0, RESOLVE_IN_ROOT).map_err(|e| resolve_error(path, &e))
    }

    /// Opens the parent of a normalized path other than `/`.
    pub fn locate(&self, path: &str) -> Result<Located, FileError> {
        let (dir, name) = split(path);
        let parent = self.open_path(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(Located {
            parent,
            name: cstring(name)?,
        })
    }

    /// `mkdir -p path` (new directories get `mode`, exactly); returns the
    /// directory opened `O_PATH`.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<OwnedFd, FileError> {
        match self.open_path(path, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.code == super::ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut current = self.fd.try_clone().map_err(os_err("/"))?;
        let mut prefix = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix = join(&prefix, part);
            match self.open_path(&prefix, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => {
                    current = fd;
                    continue;
                }
                Err(e) if e.code == super::ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
            let name = cstring(part)?;
            match sys::mkdirat(current.as_raw_fd(), &name, mode) {
                Ok(()) => {
                    // mkdirat applies the umask; set the exact mode asked for.
                    let dir = sys::openat(
                        current.as_raw_fd(),
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                    .map_err(os_err(&prefix))?;
                    sys::fchmod(dir.as_raw_fd(), mode).map_err(os_err(&prefix))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(FileError::os(&prefix, &e)),
            }
            current = self.open_path(&prefix, libc::O_PATH | libc::O_DIRECTORY)?;
        }
        Ok(current)
    }
}

/// The error of resolving `path` in the root. `ELOOP` there is a refused
/// /proc magic link, or else a symlink loop (or chain too long), which is
/// the caller's mistake rather than a permission problem.
fn resolve_error(path: &str, e: &std::io::Error) -> FileError {
    if e.raw_os_error() == Some(libc::ELOOP) && path != "/proc" && !path.starts_with("/proc/") {
        return FileError::invalid(format!("too many levels of symbolic links: {path}"));
    }
    FileError::os(path, e)
}

/// Opens directories below `dir` one level at a time, creating missing ones
/// with `mode`, refusing any symlink on the way (`RESOLVE_NO_SYMLINKS`).
pub fn mkdir_beneath(
    dir: RawFd,
    parts: &[String],
    mode: u32,
    shown: &str,
) -> Result<Option<OwnedFd>, FileError> {
    if parts.is_empty() {
        return Ok(None);
    }
    let mut prefix = String::new();
    let mut current: Option<OwnedFd> = None;
    for part in parts {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let c = cstring(&prefix)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match sys::openat2(dir, &c, flags, 0, RESOLVE_BENEATH_NO_LINKS) {
            Ok(fd) => current = Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let at = current.as_ref().map_or(dir, |f| f.as_raw_fd());
                let name = cstring(part)?;
                match sys::mkdirat(at, &name, mode) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(FileError::os(&join(shown, &prefix), &e)),
                }
                let fd = sys::openat2(dir, &c, flags, 0, RESOLVE_BENEATH_NO_LINKS)
                    .map_err(os_err(&join(shown, &prefix)))?;
                current = Some(fd);
            }
            Err(e) => return Err(FileError::os(&join(shown, &prefix), &e)),
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_are_invalid_but_magic_links_refused() {
        let eloop = std::io::Error::from_raw_os_error(libc::ELOOP);
        let e = resolve_error("/workspace/loop/x", &eloop);
        assert_eq!(e.code, super::super::ErrorCode::Invalid);
        assert_eq!(
            e.message,
            "too many levels of symbolic links: /workspace/loop/x"
        );
        let e = resolve_error("/proc/1/root/etc", &eloop);
        assert_eq!(e.code, super::super::ErrorCode::PermissionDenied);
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            resolve_error("/a", &enoent).code,
            super::super::ErrorCode::NotFound
        );
    }

    #[test]
    fn normalize_cleans_and_never_climbs_above_root() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize("/a/../../../etc").unwrap(), "/etc");
        assert_eq!(normalize("/proc/self/root/..").unwrap(), "/proc/self");
        assert!(normalize("a/b").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("/a\0b").is_err());
    }

    #[test]
    fn split_and_join_are_inverse() {
        assert_eq!(split("/a"), ("/", "a"));
        assert_eq!(split("/a/b/c"), ("/a/b", "c"));
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a/b", "c"), "/a/b/c");
    }
}
