//! Thin wrappers over the fd-relative syscalls the file API needs; each one
//! call deep, returning `io::Error` with the raw errno.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(ret)?;
    // SAFETY: a non-negative return of an fd-creating syscall is a fresh fd
    // nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dirfd, path, flags, mode, resolve)`.
pub fn openat2(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is valid (and required for
    // fields this libc version does not name).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = resolve;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` a live open_how of the
        // size we pass; the kernel copies both before returning.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(ret as libc::c_int) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            other => return other,
        }
    }
}

/// `openat(dirfd, name, flags, mode)` for a single path component.
pub fn openat(dirfd: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; openat returns a fresh fd or -1.
    owned(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dirfd`.
pub fn lstatat(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a live stat buffer.
    check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `fstat(fd)`.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    lstatat(fd, c"")
}

/// `readlinkat(dirfd, name)`.
pub fn readlinkat(dirfd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is a live buffer of the length passed.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `mkdirat(dirfd, name, mode)`.
pub fn mkdirat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) }).map(drop)
}

/// `unlinkat(dirfd, name, flags)`.
pub fn unlinkat(dirfd: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(from_dir, from, to_dir, to, flags)`.
pub fn renameat2(
    from_dir: RawFd,
    from: &CStr,
    to_dir: RawFd,
    to: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir,
            from.as_ptr(),
            to_dir,
            to.as_ptr(),
            flags,
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// `symlinkat(target, dirfd, name)`.
pub fn symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) }).map(drop)
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

/// Sets the modification (and access) time of `fd`.
pub fn set_mtime(fd: RawFd, mtime: i64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `times` is a live array of two timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

/// `sendfile(out, in, offset, count)`; returns the bytes sent.
pub fn sendfile(out: RawFd, file: RawFd, offset: &mut i64, count: usize) -> io::Result<usize> {
    // SAFETY: `offset` is a live i64 the kernel updates.
    let n = unsafe { libc::sendfile(out, file, offset, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Names and `d_type`s of a directory's entries, without `.` and `..`.
pub fn read_dir(dir: &OwnedFd) -> io::Result<Vec<(CString, u8)>> {
    // fdopendir takes ownership of the fd it is given, so give it a dup.
    let dup = dir.try_clone()?;
    let raw = dup.as_raw_fd();
    // SAFETY: `raw` is a valid directory fd; on success the DIR owns it.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // SAFETY: rewind to the start in case the fd's offset moved.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is a live DIR*; readdir64 returns NULL at the end
        // (or on error, with errno set; cleared first to tell them apart).
        let entry = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir64(stream)
        };
        if entry.is_null() {
            // SAFETY: reading this thread's errno.
            let errno = unsafe { *libc::__errno_location() };
            // SAFETY: `stream` is live and closed exactly once here.
            unsafe { libc::closedir(stream) };
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            return Ok(names);
        }
        // SAFETY: a non-NULL dirent64 from readdir64 has a NUL-terminated name
        // valid until the next readdir64 call; we copy it now.
        let (name, kind) = unsafe {
            (
                CStr::from_ptr((*entry).d_name.as_ptr()).to_owned(),
                (*entry).d_type,
            )
        };
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push((name, kind));
        }
    }
}

/// Sets this thread's file-system identity: supplementary groups, fsgid,
/// fsuid. Raw syscalls, because glibc's wrappers would apply them to every
/// thread of the agent. A non-zero fsuid also drops this thread's
/// file-system capabilities, so permission checks are the user's.
pub fn set_thread_fs_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is a live array of the length passed.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    check(ret as libc::c_int)?;
    // SAFETY: setfsgid/setfsuid take one integer and return the previous id;
    // calling them again with -1 reads the current one back.
    let (now_gid, now_uid) = unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        let g = libc::syscall(libc::SYS_setfsgid, -1i32 as u32);
        libc::syscall(libc::SYS_setfsuid, uid);
        let u = libc::syscall(libc::SYS_setfsuid, -1i32 as u32);
        (g as u32, u as u32)
    };
    if now_gid != gid || now_uid != uid {
        return Err(io::Error::other(format!(
            "could not switch to uid {uid} gid {gid} (now {now_uid}/{now_gid})"
        )));
    }
    Ok(())
}
