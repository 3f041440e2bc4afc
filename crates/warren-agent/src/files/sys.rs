//! Thin wrappers over the fd-relative syscalls the file API needs; each one
//! call deep, returning `io::Error` with the raw errno.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

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
            // Kernels without openat2 (gVisor's, before 2023): emulated only
            // where the agent runs under gVisor; elsewhere a missing openat2
            // fails closed.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                if EMULATE_OPENAT2.load(Ordering::Relaxed) {
                    return openat2_emulated(dirfd, path, flags, mode, resolve);
                }
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel has no openat2(2); the file API needs it",
                ));
            }
            other => return other,
        }
    }
}

/// Whether [`openat2`] emulates the syscall when the kernel lacks it.
static EMULATE_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Lets [`openat2`] emulate the syscall on kernels without it. Only the
/// gVisor driver's agent calls this (gVisor's sentry before 2023 has no
/// openat2, and its own kernel confines the sandbox anyway).
pub fn enable_openat2_emulation() {
    EMULATE_OPENAT2.store(true, Ordering::Relaxed);
}

/// The resolve flags [`openat2_emulated`] implements.
const EMULATED_RESOLVE: u64 = libc::RESOLVE_IN_ROOT
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS;

/// Most symlinks one resolution follows (the kernel's limit).
const MAX_LINKS: u32 = 40;

/// `statfs.f_type` of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

fn errno(code: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// What `openat2` does, for kernels without it (gVisor's sentry before
/// 2023), as the file API uses it:
/// * `RESOLVE_IN_ROOT`: a walk one component at a time from `dirfd`
///   (`O_PATH | O_NOFOLLOW`), following symlinks itself (absolute targets
///   restart at `dirfd`, `..` stops there, at most 40 links); any symlink in
///   procfs is refused with ELOOP, which covers the magic links
///   `RESOLVE_NO_MAGICLINKS` refuses.
/// * `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: the same walk refusing `..`
///   (EXDEV) and any symlink (ELOOP).
///
/// Other resolve flags are refused with EINVAL.
fn openat2_emulated(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    if resolve & !EMULATED_RESOLVE != 0 {
        return Err(errno(libc::EINVAL));
    }
    let in_root = resolve & libc::RESOLVE_IN_ROOT != 0;
    let beneath = resolve & libc::RESOLVE_BENEATH != 0;
    if in_root == beneath {
        // Both, or neither (plain openat is not what the file API uses).
        return Err(errno(libc::EINVAL));
    }
    let no_symlinks = resolve & libc::RESOLVE_NO_SYMLINKS != 0;
    let bytes = path.to_bytes();
    if beneath && bytes.starts_with(b"/") {
        return Err(errno(libc::EXDEV));
    }
    let mut walk = Walk {
        root: dirfd,
        stack: Vec::new(),
        links: 0,
        no_symlinks,
        beneath,
    };
    let mut pending: std::collections::VecDeque<Vec<u8>> = components(bytes);
    let wants_dir = bytes.ends_with(b"/");
    loop {
        let Some(part) = pending.pop_front() else {
            // The path ended on a directory (`/`, `.`, `..`, `a/..`).
            return openat(
                walk.cwd(),
                c".",
                flags & !(libc::O_CREAT | libc::O_EXCL),
                mode,
            );
        };
        match part.as_slice() {
            b"." => continue,
            b".." => {
                if walk.beneath {
                    return Err(errno(libc::EXDEV));
                }
                // Clamped at the root.
                walk.stack.pop();
                continue;
            }
            _ => {}
        }
        let name = CString::new(part).map_err(|_| errno(libc::EINVAL))?;
        let last = pending.is_empty();
        if !last {
            let fd = openat(walk.cwd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let st = fstat(fd.as_raw_fd())?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => walk.stack.push(fd),
                libc::S_IFLNK => walk.follow(&name, &mut pending)?,
                _ => return Err(errno(libc::ENOTDIR)),
            }
            continue;
        }
        // The final component.
        let mut final_flags = flags | libc::O_NOFOLLOW;
        if wants_dir && flags & libc::O_CREAT == 0 {
            final_flags |= libc::O_DIRECTORY;
        }
        if flags & libc::O_NOFOLLOW == 0 {
            match openat(walk.cwd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => {
                    if fstat(fd.as_raw_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK {
                        if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                            return Err(errno(libc::EEXIST));
                        }
                        walk.follow(&name, &mut pending)?;
                        continue;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let fd = openat(walk.cwd(), &name, final_flags, mode)?;
        if flags & libc::O_NOFOLLOW == 0
            && fstat(fd.as_raw_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK
        {
            // It became a symlink after the check (O_PATH opened the link).
            return Err(errno(libc::ELOOP));
        }
        return Ok(fd);
    }
}

/// The non-empty components of a path.
fn components(bytes: &[u8]) -> std::collections::VecDeque<Vec<u8>> {
    bytes
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The state of an emulated `openat2` walk.
struct Walk {
    /// Where resolution starts and `..` stops.
    root: RawFd,
    /// The directories entered below `root`, innermost last.
    stack: Vec<OwnedFd>,
    /// Symlinks followed so far.
    links: u32,
    no_symlinks: bool,
    beneath: bool,
}

impl Walk {
    /// The directory the next component is looked up in.
    fn cwd(&self) -> RawFd {
        self.stack.last().map_or(self.root, AsRawFd::as_raw_fd)
    }

    /// Follows the symlink `name` in the current directory: its target's
    /// components go in front of `pending`.
    fn follow(
        &mut self,
        name: &CStr,
        pending: &mut std::collections::VecDeque<Vec<u8>>,
    ) -> io::Result<()> {
        if self.no_symlinks {
            return Err(errno(libc::ELOOP));
        }
        if is_procfs(self.cwd())? {
            // procfs symlinks include the magic ones (/proc/*/fd/*, exe,
            // root, cwd) that RESOLVE_NO_MAGICLINKS refuses.
            return Err(errno(libc::ELOOP));
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(errno(libc::ELOOP));
        }
        let target = readlinkat(self.cwd(), name)?;
        if target.starts_with(b"/") {
            if self.beneath {
                return Err(errno(libc::EXDEV));
            }
            self.stack.clear();
        }
        for part in components(&target).into_iter().rev() {
            pending.push_front(part);
        }
        Ok(())
    }
}

/// Whether the directory `fd` is on procfs.
fn is_procfs(fd: RawFd) -> io::Result<bool> {
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` a live statfs buffer.
    check(unsafe { libc::fstatfs(fd, &mut st) })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == PROC_SUPER_MAGIC)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A private directory removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("warren-openat2-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn fd(&self) -> OwnedFd {
            let c = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
            openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open_in_root(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
        let c = CString::new(path).unwrap();
        openat2_emulated(
            root.as_raw_fd(),
            &c,
            libc::O_RDONLY,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        )
    }

    fn contents(fd: OwnedFd) -> String {
        let mut text = String::new();
        io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
        text
    }

    fn outside(dir: &Path) -> PathBuf {
        let file = dir.with_extension("outside");
        std::fs::write(&file, "OUTSIDE").unwrap();
        file
    }

    #[test]
    fn in_root_keeps_symlinks_and_dotdot_inside() {
        let d = Dir::new("inroot");
        let out = outside(&d.0);
        std::fs::create_dir_all(d.0.join("etc/sub")).unwrap();
        std::fs::write(d.0.join("etc/passwd"), "INSIDE").unwrap();
        // Absolute targets restart at the root; `..` stops there.
        symlink("/etc/passwd", d.0.join("abs")).unwrap();
        symlink("../../../../../../etc/passwd", d.0.join("etc/sub/rel")).unwrap();
        symlink(&out, d.0.join("escape")).unwrap();
        let root = d.fd();
        assert_eq!(contents(open_in_root(&root, "abs").unwrap()), "INSIDE");
        assert_eq!(
            contents(open_in_root(&root, "etc/sub/rel").unwrap()),
            "INSIDE"
        );
        assert_eq!(
            contents(open_in_root(&root, "/../../etc/./sub/../passwd").unwrap()),
            "INSIDE"
        );
        // The outside file's absolute path, re-rooted, does not exist inside.
        let e = open_in_root(&root, "escape").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let _ = std::fs::remove_file(out);
    }

    #[test]
    fn in_root_limits_links_and_refuses_proc_links() {
        let d = Dir::new("loops");
        symlink("b", d.0.join("a")).unwrap();
        symlink("a", d.0.join("b")).unwrap();
        let root = d.fd();
        let e = open_in_root(&root, "a").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        // A root whose /proc is the real procfs: magic links are refused.
        let slash = openat(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let e = open_in_root(&slash, "/proc/self/root/etc/hostname").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = open_in_root(&slash, "/proc/self/fd/0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn unimplemented_resolve_flags_are_refused() {
        let d = Dir::new("flags");
        let root = d.fd();
        let e = openat2_emulated(
            root.as_raw_fd(),
            c".",
            libc::O_RDONLY,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_XDEV,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn beneath_refuses_dotdot_and_symlinks() {
        let d = Dir::new("beneath");
        std::fs::create_dir(d.0.join("dir")).unwrap();
        symlink("dir", d.0.join("link")).unwrap();
        let root = d.fd();
        let flags = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        let open = |p: &CStr| openat2_emulated(root.as_raw_fd(), p, libc::O_PATH, 0, flags);
        assert!(open(c"dir").is_ok());
        assert_eq!(
            open(c"link/x").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(open(c"../x").unwrap_err().raw_os_error(), Some(libc::EXDEV));
        assert_eq!(open(c"/x").unwrap_err().raw_os_error(), Some(libc::EXDEV));
    }
}
