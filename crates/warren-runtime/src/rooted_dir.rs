//! A host directory whose contents a sandbox controls (an overlay upper
//! directory) or that came from an untrusted archive (an image layer), read
//! on the host without ever following a symlink. Multi-component lookups go
//! through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` below the
//! directory's fd; single steps use `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// An open directory that paths are resolved inside of.
#[derive(Debug)]
pub(crate) struct RootedDir {
    fd: OwnedFd,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RootedDir {
    /// Opens `path`, a trusted host path (symlinks in it are followed).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is a valid NUL-terminated string for the whole call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        Ok(Self { fd: owned(fd)? })
    }

    /// Opens `rel` (relative; empty means the directory itself) inside this
    /// directory with `flags`, refusing any symlink on the way (`ELOOP`) and
    /// never leaving the directory.
    pub(crate) fn open_at(&self, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let bytes = rel.as_os_str().as_bytes();
        let c = cstring(if bytes.is_empty() { b"." } else { bytes })?;
        // SAFETY: all-zero is a valid `open_how` (the struct is non-exhaustive).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_XDEV;
        // SAFETY: `c` and `how` outlive the call; the size passed is `how`'s.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        owned(fd as libc::c_int)
    }

    /// The directory's own fd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `lstat` of one entry of `dir`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: all-zero is a valid `stat`; the kernel fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` and `st` are valid for the duration of the call.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstat` of an open fd.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`; the kernel fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for the duration of the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens one entry of `dir`, never following a symlink (`ELOOP` for one).
pub(crate) fn open_child(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

/// The target of the symlink `name` in `dir`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let c = cstring(name.as_bytes())?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `c` is valid; `buf` has `buf.len()` writable bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// Names of the entries of the directory `dir` (opened for reading, not
/// `O_PATH`), without `.` and `..`.
pub(crate) fn entry_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let dup = dir.try_clone_to_owned()?;
    // SAFETY: `dup` is an open directory fd; on success the DIR owns it.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    let _owned_by_stream = dup.into_raw_fd();
    // The dup shares the file offset with `dir`; start from the beginning.
    // SAFETY: `stream` is a valid DIR.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it distinguishes the end
        // of the directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a valid DIR until closedir below.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break match err.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(err),
            };
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `stream` is valid and closed exactly once (this also closes `dup`).
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// The value of extended attribute `name` of `fd` (opened for reading, not
/// `O_PATH`), `None` when it has none or the file system has no xattrs.
pub(crate) fn xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 64];
    // SAFETY: `name` is NUL-terminated; `buf` has `buf.len()` writable bytes.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // ERANGE: a value longer than any overlay marker; not one of ours.
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::ERANGE) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

/// True for the errors that mean "this entry changed or vanished while we
/// looked" (or is a symlink where a directory was expected).
pub(crate) fn is_gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_at_refuses_symlinks_anywhere_in_the_path() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), "ok").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("up")).unwrap();
        std::os::unix::fs::symlink("d/f", root.path().join("d/link")).unwrap();
        let dir = RootedDir::open(root.path()).unwrap();
        assert!(dir.open_at(Path::new("d/f"), libc::O_RDONLY).is_ok());
        for bad in ["up/secret", "d/link"] {
            let err = dir.open_at(Path::new(bad), libc::O_RDONLY).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{bad}");
        }
        let err = dir
            .open_at(Path::new("../../../etc/passwd"), libc::O_RDONLY)
            .unwrap_err();
        assert!(is_gone(&err), "{err}");
    }

    #[test]
    fn entry_names_lists_without_dots() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), "").unwrap();
        std::fs::create_dir(root.path().join("b")).unwrap();
        let dir = RootedDir::open(root.path()).unwrap();
        let fd = dir
            .open_at(Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY)
            .unwrap();
        let mut names = entry_names(fd.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);
        // Reading twice from the same fd starts over.
        assert_eq!(entry_names(fd.as_fd()).unwrap().len(), 2);
    }
}
