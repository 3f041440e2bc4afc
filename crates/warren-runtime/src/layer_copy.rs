//! Copying an overlay upper directory into a layer, in process (spawning
//! `cp -a` costs about as much as the whole copy of a small layer).
//!
//! Everything overlayfs reads from a lower layer is kept: owners, modes
//! (setuid and sticky bits included), times, every xattr (`user.overlay.*`
//! and `trusted.overlay.*` marks opaque directories), whiteouts (character
//! devices 0:0) and other special files, symlinks (never followed) and hard
//! links within the tree. Character and block devices other than 0:0 are
//! skipped (a sandbox has no business leaving them in a layer).
//!
//! The source tree belongs to a sandbox, so the walk never resolves a path
//! through it: every entry is opened relative to its parent's descriptor
//! with `O_NOFOLLOW`, checked against the `fstatat` of the listing, and
//! copied from that descriptor. File data goes through `copy_file_range`
//! one data range at a time (`SEEK_DATA`/`SEEK_HOLE`), so holes stay holes
//! and file systems that can share or offload blocks do.
//!
//! Overlay (kernel 5.8 and later) makes whiteouts hard links to one shared
//! inode; when the layer's copy of such an inode reaches the file system's
//! link limit (`EMLINK`), a fresh node is made and later links go to it.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Deepest directory nesting copied (each level holds two descriptors).
const MAX_DEPTH: usize = 256;

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name with a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just returned this descriptor to us; nothing
        // else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Opens `name` in directory `dir`, never following a symlink.
fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; `dir` is a live descriptor.
    check_fd(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is live; `st` is writable memory of the right type.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// `fstatat` of `name` in `dir`, not following a symlink.
fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: as in `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated name, live descriptor, writable `st`.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// The names in directory `dir` (without `.` and `..`).
fn dir_names(dir: RawFd) -> io::Result<Vec<CString>> {
    // SAFETY: `dir` is live; the duplicate is ours and handed to fdopendir.
    let dup = unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is an open directory descriptor we own; on success the
    // stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(err);
    }
    // SAFETY: `stream` is a fresh stream at the directory's start.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it tells the end of the
        // stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is open; the entry stays valid until the next
        // readdir on it, and we copy the name before that.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: `d_name` is a NUL-terminated array inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `stream` is open and closed once (which closes `dup`).
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Where an xattr operation applies: an open file, or a path whose last
/// component is not followed.
enum XattrTarget {
    Fd(RawFd),
    Path(CString),
}

impl XattrTarget {
    /// `name` in directory `dir`, through the directory's descriptor (the
    /// `/proc/self/fd` link resolves to that very directory).
    fn at(dir: RawFd, name: &CStr) -> io::Result<Self> {
        let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
        path.extend_from_slice(name.to_bytes());
        Ok(Self::Path(c_string(&path)?))
    }

    fn list(&self, buf: &mut [u8]) -> isize {
        match self {
            // SAFETY: live descriptor; the buffer is writable and ours.
            Self::Fd(fd) => unsafe { libc::flistxattr(*fd, buf.as_mut_ptr().cast(), buf.len()) },
            // SAFETY: NUL-terminated path; the buffer is writable and ours.
            Self::Path(p) => unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            },
        }
    }

    fn get(&self, name: &CStr, buf: &mut [u8]) -> isize {
        match self {
            // SAFETY: live descriptor, NUL-terminated name, our buffer.
            Self::Fd(fd) => unsafe {
                libc::fgetxattr(*fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            },
            // SAFETY: NUL-terminated path and name, our buffer.
            Self::Path(p) => unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            },
        }
    }

    fn set(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        check(match self {
            // SAFETY: live descriptor, NUL-terminated name, borrowed value.
            Self::Fd(fd) => unsafe {
                libc::fsetxattr(*fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            },
            // SAFETY: NUL-terminated path and name, borrowed value.
            Self::Path(p) => unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            },
        })
    }

    fn names(&self) -> io::Result<Vec<CString>> {
        let mut buf = vec![0u8; 1024];
        loop {
            let n = self.list(&mut buf);
            if n >= 0 {
                buf.truncate(usize::try_from(n).unwrap_or(0));
                return buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(c_string)
                    .collect();
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(err),
            }
        }
    }

    fn value(&self, name: &CStr) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        loop {
            let n = self.get(name, &mut buf);
            if n >= 0 {
                buf.truncate(usize::try_from(n).unwrap_or(0));
                return Ok(buf);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 4, 0);
            } else {
                return Err(err);
            }
        }
    }
}

/// Copies every xattr of `src` onto `dest`.
fn copy_xattrs(src: &XattrTarget, dest: &XattrTarget) -> io::Result<()> {
    for name in src.names()? {
        let value = match src.value(&name) {
            Ok(value) => value,
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        dest.set(&name, &value)?;
    }
    Ok(())
}

fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Owner, mode, xattrs and times of an open source onto an open copy, in
/// the order that keeps them (chown clears setuid bits and capabilities).
fn copy_attributes_fd(src: RawFd, dest: RawFd, st: &libc::stat) -> io::Result<()> {
    // SAFETY: live descriptor.
    check(unsafe { libc::fchown(dest, st.st_uid, st.st_gid) })?;
    // SAFETY: live descriptor.
    check(unsafe { libc::fchmod(dest, st.st_mode & 0o7777) })?;
    copy_xattrs(&XattrTarget::Fd(src), &XattrTarget::Fd(dest))?;
    let times = times_of(st);
    // SAFETY: live descriptor and a two-element timespec array.
    check(unsafe { libc::futimens(dest, times.as_ptr()) })
}

/// The same for entries not opened (symlinks and special files), by name
/// in their directories, never following the last component.
fn copy_attributes_at(
    src_dir: RawFd,
    dest_dir: RawFd,
    name: &CStr,
    st: &libc::stat,
) -> io::Result<()> {
    // SAFETY: live descriptor, NUL-terminated name.
    check(unsafe {
        libc::fchownat(
            dest_dir,
            name.as_ptr(),
            st.st_uid,
            st.st_gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if file_type(st) != libc::S_IFLNK {
        // SAFETY: live descriptor, NUL-terminated name; the entry is a node
        // we just made in a directory only we write to, not a symlink.
        check(unsafe { libc::fchmodat(dest_dir, name.as_ptr(), st.st_mode & 0o7777, 0) })?;
    }
    copy_xattrs(
        &XattrTarget::at(src_dir, name)?,
        &XattrTarget::at(dest_dir, name)?,
    )?;
    let times = times_of(st);
    // SAFETY: live descriptor, NUL-terminated name, two-element array.
    check(unsafe {
        libc::utimensat(
            dest_dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Seeks `fd` with `whence` (`SEEK_DATA`/`SEEK_HOLE`); `None` past the end.
fn seek(fd: RawFd, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
    // SAFETY: live descriptor.
    let at = unsafe { libc::lseek(fd, off, whence) };
    if at < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(u64::try_from(at).unwrap_or(0)))
}

/// Copies bytes `[start, end)` of `src` to the same offsets of `dest`.
fn copy_range(src: RawFd, dest: RawFd, start: u64, end: u64) -> io::Result<u64> {
    let to_off = |v: u64| {
        libc::off64_t::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))
    };
    let (mut in_off, mut out_off) = (to_off(start)?, to_off(start)?);
    let end = to_off(end)?;
    let mut fallback = false;
    while in_off < end {
        let want = usize::try_from(end - in_off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let n = if fallback {
            let mut buf = vec![0u8; want.min(1 << 20)];
            // SAFETY: live descriptor, writable buffer of that length.
            let r = unsafe { libc::pread64(src, buf.as_mut_ptr().cast(), buf.len(), in_off) };
            if r > 0 {
                let len = usize::try_from(r).unwrap_or(0);
                let mut done = 0;
                while done < len {
                    // SAFETY: live descriptor; the slice is within `buf`.
                    let w = unsafe {
                        libc::pwrite64(
                            dest,
                            buf[done..len].as_ptr().cast(),
                            len - done,
                            out_off + libc::off64_t::try_from(done).unwrap_or(0),
                        )
                    };
                    if w < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    done += usize::try_from(w).unwrap_or(0);
                }
                in_off += libc::off64_t::try_from(len).unwrap_or(0);
                out_off += libc::off64_t::try_from(len).unwrap_or(0);
            }
            r
        } else {
            // SAFETY: live descriptors; the kernel advances both offsets.
            unsafe { libc::copy_file_range(src, &mut in_off, dest, &mut out_off, want, 0) }
        };
        if n == 0 {
            break; // The file shrank meanwhile.
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) if !fallback => {
                    fallback = true;
                }
                Some(libc::EINTR) => {}
                _ => return Err(err),
            }
        }
    }
    Ok(u64::try_from(in_off).unwrap_or(0).saturating_sub(start))
}

/// Copies the data of `src` (of `size` bytes) into the empty `dest`,
/// leaving holes as holes; returns the data bytes copied.
fn copy_data(src: RawFd, dest: RawFd, size: u64) -> io::Result<u64> {
    let mut copied = 0u64;
    let mut offset = 0u64;
    while offset < size {
        let data = match seek(src, offset, libc::SEEK_DATA) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            // No hole support: all of it is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => offset,
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = match seek(src, data, libc::SEEK_HOLE) {
            Ok(Some(hole)) => hole.min(size),
            Ok(None) => size,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => size,
            Err(e) => return Err(e),
        };
        if hole <= data {
            break;
        }
        copied = copied.saturating_add(copy_range(src, dest, data, hole)?);
        offset = hole;
    }
    let len = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: live descriptor.
    check(unsafe { libc::ftruncate(dest, len) })?;
    Ok(copied)
}

fn at_path(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn changed(what: &str) -> io::Error {
    io::Error::other(format!("{what} changed while it was copied"))
}

/// Fails unless the opened `st` is the inode the listing saw.
fn same_inode(opened: &libc::stat, listed: &libc::stat) -> io::Result<()> {
    if opened.st_dev == listed.st_dev
        && opened.st_ino == listed.st_ino
        && file_type(opened) == file_type(listed)
    {
        Ok(())
    } else {
        Err(changed("the entry"))
    }
}

/// The target of symlink `name` in `dir`.
fn read_link_at(dir: RawFd, name: &CStr) -> io::Result<CString> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: live descriptor, NUL-terminated name, our buffer.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n < buf.len() {
            buf.truncate(n);
            return c_string(&buf);
        }
        if buf.len() > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink too long",
            ));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// One copy in progress.
struct Copier {
    /// The destination's root, which `links` paths are relative to.
    dest_root: OwnedFd,
    /// Source inode (device, inode) with more than one link → the copy
    /// later links go to.
    links: HashMap<(u64, u64), PathBuf>,
    /// Regular file data bytes copied (hard links once, holes not).
    bytes: u64,
}

impl Copier {
    fn copy_dir(&mut self, src: RawFd, dest: RawFd, rel: &Path, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: nested deeper than {MAX_DEPTH} directories",
                    rel.display()
                ),
            ));
        }
        for name in dir_names(src).map_err(at_path(rel))? {
            let child = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            self.copy_entry(src, dest, &name, &child, depth)?;
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        src_dir: RawFd,
        dest_dir: RawFd,
        name: &CStr,
        rel: &Path,
        depth: usize,
    ) -> io::Result<()> {
        let st = lstat_at(src_dir, name).map_err(at_path(rel))?;
        match file_type(&st) {
            libc::S_IFDIR => {
                let (from, to) = (|| {
                    let from = open_at(src_dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    same_inode(&fstat(from.as_raw_fd())?, &st)?;
                    // SAFETY: live descriptor, NUL-terminated name.
                    check(unsafe { libc::mkdirat(dest_dir, name.as_ptr(), 0o700) })?;
                    let to = open_at(dest_dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    Ok::<_, io::Error>((from, to))
                })()
                .map_err(at_path(rel))?;
                self.copy_dir(from.as_raw_fd(), to.as_raw_fd(), rel, depth + 1)?;
                // After the contents, so the times stay.
                copy_attributes_fd(from.as_raw_fd(), to.as_raw_fd(), &st).map_err(at_path(rel))
            }
            libc::S_IFREG => self
                .copy_file(src_dir, dest_dir, name, rel, &st)
                .map_err(at_path(rel)),
            libc::S_IFLNK => (|| {
                let target = read_link_at(src_dir, name)?;
                // SAFETY: NUL-terminated strings, live descriptor.
                check(unsafe { libc::symlinkat(target.as_ptr(), dest_dir, name.as_ptr()) })?;
                copy_attributes_at(src_dir, dest_dir, name, &st)
            })()
            .map_err(at_path(rel)),
            libc::S_IFCHR | libc::S_IFBLK if st.st_rdev != 0 => {
                tracing::warn!(
                    path = %rel.display(),
                    "a device node is not copied into a layer"
                );
                Ok(())
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => (|| {
                if st.st_nlink > 1 && self.link(dest_dir, name, &st)? {
                    return Ok(());
                }
                // SAFETY: live descriptor, NUL-terminated name; the device
                // number is 0 (checked above for devices).
                check(unsafe { libc::mknodat(dest_dir, name.as_ptr(), st.st_mode, 0) })?;
                copy_attributes_at(src_dir, dest_dir, name, &st)?;
                self.remember(&st, rel);
                Ok(())
            })()
            .map_err(at_path(rel)),
            _ => Ok(()),
        }
    }

    fn copy_file(
        &mut self,
        src_dir: RawFd,
        dest_dir: RawFd,
        name: &CStr,
        rel: &Path,
        st: &libc::stat,
    ) -> io::Result<()> {
        if st.st_nlink > 1 && self.link(dest_dir, name, st)? {
            return Ok(());
        }
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let from = open_at(src_dir, name, flags, 0)?;
        let opened = fstat(from.as_raw_fd())?;
        same_inode(&opened, st)?;
        let to = open_at(
            dest_dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        let size = u64::try_from(opened.st_size).unwrap_or(0);
        let copied = copy_data(from.as_raw_fd(), to.as_raw_fd(), size)?;
        self.bytes = self.bytes.saturating_add(copied);
        copy_attributes_fd(from.as_raw_fd(), to.as_raw_fd(), st)?;
        self.remember(st, rel);
        Ok(())
    }

    /// Links `name` to the copy of the same source inode made earlier.
    /// `false` when there is none yet or it cannot take another link
    /// (`EMLINK`): the caller makes a fresh node, which later links go to.
    fn link(&self, dest_dir: RawFd, name: &CStr, st: &libc::stat) -> io::Result<bool> {
        let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) else {
            return Ok(false);
        };
        let first = c_string(first.as_os_str().as_bytes())?;
        // SAFETY: live descriptors, NUL-terminated names; flags 0 does not
        // follow a symlink (and `first` names a copy we made).
        let rc = unsafe {
            libc::linkat(
                self.dest_root.as_raw_fd(),
                first.as_ptr(),
                dest_dir,
                name.as_ptr(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EMLINK | libc::ENAMETOOLONG) => Ok(false),
            _ => Err(err),
        }
    }

    /// Makes `rel` the copy later links of `st`'s inode go to.
    fn remember(&mut self, st: &libc::stat, rel: &Path) {
        if st.st_nlink > 1 {
            self.links.insert((st.st_dev, st.st_ino), rel.to_path_buf());
        }
    }
}

/// Copies the tree at `src` to `dest` (which must not exist); returns the
/// bytes of regular file data copied (hard links once, holes not).
pub(crate) fn copy_tree(src: &Path, dest: &Path) -> io::Result<u64> {
    let c_src = c_string(src.as_os_str().as_bytes())?;
    let c_dest = c_string(dest.as_os_str().as_bytes())?;
    let from = open_at(
        libc::AT_FDCWD,
        &c_src,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(at_path(src))?;
    let st = fstat(from.as_raw_fd()).map_err(at_path(src))?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::mkdir(c_dest.as_ptr(), 0o700) }).map_err(at_path(dest))?;
    let to = open_at(
        libc::AT_FDCWD,
        &c_dest,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(at_path(dest))?;
    let mut copier = Copier {
        dest_root: to.try_clone()?,
        links: HashMap::new(),
        bytes: 0,
    };
    copier.copy_dir(from.as_raw_fd(), to.as_raw_fd(), Path::new(""), 0)?;
    copy_attributes_fd(from.as_raw_fd(), to.as_raw_fd(), &st).map_err(at_path(dest))?;
    Ok(copier.bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashSet;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn c_path(path: &Path) -> CString {
        c_string(path.as_os_str().as_bytes()).unwrap()
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let n = CString::new(name).unwrap();
        XattrTarget::Path(c_path(path)).set(&n, value).unwrap();
    }

    fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
        let p = c_path(path);
        // SAFETY: NUL-terminated path.
        let rc = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
        assert_eq!(rc, 0, "mknod {} (the tests run as root)", path.display());
    }

    #[test]
    fn copies_modes_links_times_xattrs_and_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("upper");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/a"), vec![7u8; 1000]).unwrap();
        fs::set_permissions(src.join("d/a"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(src.join("d/e"), fs::Permissions::from_mode(0o1733)).unwrap();
        fs::hard_link(src.join("d/a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("dirlink")).unwrap();
        // Requires root (trusted.*) or a file system with user xattrs.
        set_xattr(&src.join("d"), "user.overlay.opaque", b"y");
        set_xattr(&src.join("d/a"), "trusted.warren.test", b"t");
        mknod(&src.join("gone"), libc::S_IFCHR | 0o600, 0);
        fs::hard_link(src.join("gone"), src.join("d/gone2")).unwrap();
        mknod(
            &src.join("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        mknod(&src.join("fifo"), libc::S_IFIFO | 0o640, 0);
        let dest = tmp.path().join("layer");
        assert_eq!(copy_tree(&src, &dest).unwrap(), 1000);

        let a = fs::metadata(dest.join("d/a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o4751);
        assert_eq!(a.ino(), fs::metadata(dest.join("b")).unwrap().ino());
        assert_eq!(a.mtime(), fs::metadata(src.join("d/a")).unwrap().mtime());
        assert_eq!(fs::read(dest.join("d/a")).unwrap(), vec![7u8; 1000]);
        let e = fs::metadata(dest.join("d/e")).unwrap();
        assert_eq!(e.mode() & 0o7777, 0o1733);
        let d_src = fs::metadata(src.join("d")).unwrap();
        let d_dest = fs::metadata(dest.join("d")).unwrap();
        assert_eq!(
            (d_dest.mtime(), d_dest.mtime_nsec()),
            (d_src.mtime(), d_src.mtime_nsec())
        );
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(fs::symlink_metadata(dest.join("dirlink"))
            .unwrap()
            .file_type()
            .is_symlink());
        let value = |p: &Path, n: &str| {
            XattrTarget::Path(c_path(p))
                .value(&CString::new(n).unwrap())
                .unwrap()
        };
        assert_eq!(value(&dest.join("d"), "user.overlay.opaque"), b"y");
        assert_eq!(value(&dest.join("d/a"), "trusted.warren.test"), b"t");
        let gone = fs::symlink_metadata(dest.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        assert_eq!(
            gone.ino(),
            fs::symlink_metadata(dest.join("d/gone2")).unwrap().ino()
        );
        // Real devices are left out; fifos are kept.
        assert!(fs::symlink_metadata(dest.join("null")).is_err());
        let fifo = fs::symlink_metadata(dest.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o640);
        // An existing destination is refused.
        assert!(copy_tree(&src, &dest).is_err());
    }

    #[test]
    fn whiteouts_past_the_link_limit_get_fresh_nodes() {
        // Overlay's shared whiteout inode can have more links than ext4
        // allows one inode (65000): the source lives on tmpfs, the layer on
        // ext4.
        let shm = Path::new("/dev/shm");
        let src_tmp = match tempfile::tempdir_in(shm) {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("skipped: no tmpfs at /dev/shm ({e})");
                return;
            }
        };
        let dest_tmp = tempfile::tempdir().unwrap();
        // SAFETY: an all-zero statfs is a valid value to be overwritten.
        let mut fs_stat: libc::statfs = unsafe { std::mem::zeroed() };
        let c = c_path(dest_tmp.path());
        // SAFETY: NUL-terminated path and a writable statfs.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut fs_stat) }, 0);
        if fs_stat.f_type != 0xEF53 {
            eprintln!("skipped: the layer side is not ext4, whose link limit this test needs");
            return;
        }
        let src = src_tmp.path().join("upper");
        fs::create_dir_all(src.join("w")).unwrap();
        mknod(&src.join("w/0"), libc::S_IFCHR, 0);
        let links = 65_100;
        for n in 1..links {
            fs::hard_link(src.join("w/0"), src.join(format!("w/{n}"))).unwrap();
        }
        let dest = dest_tmp.path().join("layer");
        copy_tree(&src, &dest).unwrap();
        let mut inodes = HashSet::new();
        for n in 0..links {
            let meta = fs::symlink_metadata(dest.join(format!("w/{n}"))).unwrap();
            assert!(meta.file_type().is_char_device());
            assert_eq!(meta.rdev(), 0);
            inodes.insert(meta.ino());
        }
        assert_eq!(inodes.len(), 2, "one node per 65000 links");
    }

    #[test]
    fn sparse_files_stay_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("upper");
        fs::create_dir(&src).unwrap();
        let big = 50u64 << 30;
        let file = fs::File::create(src.join("sparse")).unwrap();
        file.set_len(big).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"middle", 10 << 30).unwrap();
        file.write_all_at(b"tail", big - 4).unwrap();
        drop(file);
        let dest = tmp.path().join("layer");
        let copied = copy_tree(&src, &dest).unwrap();
        assert!(copied < 16 << 20, "copied {copied} bytes of data");
        let meta = fs::metadata(dest.join("sparse")).unwrap();
        assert_eq!(meta.len(), big);
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "the copy uses {} bytes on disk",
            meta.blocks() * 512
        );
        let copy = fs::File::open(dest.join("sparse")).unwrap();
        let mut buf = [0u8; 6];
        copy.read_exact_at(&mut buf[..4], 0).unwrap();
        assert_eq!(&buf[..4], b"head");
        copy.read_exact_at(&mut buf, 10 << 30).unwrap();
        assert_eq!(&buf, b"middle");
        copy.read_exact_at(&mut buf[..4], big - 4).unwrap();
        assert_eq!(&buf[..4], b"tail");
        copy.read_exact_at(&mut buf, 5 << 30).unwrap();
        assert_eq!(buf, [0u8; 6]);
    }
}
