//! Tar archives: `tar_download` writes one of a directory or a file
//! (entries named relative to its parent, symlinks stored as symlinks);
//! `tar_upload` unpacks one into a directory, refusing absolute names, `..`
//! and any path through a symlink.

use std::ffi::CStr;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Component;

use warren_proto::{ChunkReader, EntryKind, FilePathRequest, Frame, TarUploadRequest};

use super::entries::{self, kind_of};
use super::path::{self, Root};
use super::sys;
use super::transfer::BUFFER;
use super::{os_err, send, Conn, ErrorCode, FileError};

fn header_of(st: &libc::stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Appends the entry `name` of `dir` as `archive_path`. An entry that
/// cannot be read fails the whole archive (like `tar` exiting non-zero);
/// special files (devices, fifos, sockets) are left out.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: RawFd,
    name: &CStr,
    st: &libc::stat,
    archive_path: &str,
) -> std::io::Result<()> {
    let mut h = header_of(st);
    match kind_of(st.st_mode) {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut h, format!("{archive_path}/"), std::io::empty())
        }
        EntryKind::Symlink => {
            let target = sys::readlinkat(dir, name)?;
            h.set_entry_type(tar::EntryType::Symlink);
            let target = String::from_utf8_lossy(&target).into_owned();
            builder.append_link(&mut h, archive_path, target)
        }
        EntryKind::File => {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
            let fd = sys::openat(dir, name, flags, 0)?;
            let size = st.st_size.max(0) as u64;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            // Exactly `size` bytes even if the file changes meanwhile, so
            // the archive stays well-formed.
            let data = std::fs::File::from(fd)
                .take(size)
                .chain(std::io::repeat(0))
                .take(size);
            builder.append_data(&mut h, archive_path, data)
        }
        EntryKind::Other => Ok(()),
    }
}

pub fn download(root: &Root, req: &FilePathRequest, conn: &Conn) -> Result<(), FileError> {
    let path = path::normalize(&req.path)?;
    let top = entries::stat(root, &path)?;
    let (parent, name) = if path == "/" {
        (
            root.open_path("/", libc::O_PATH | libc::O_DIRECTORY)?,
            c"".to_owned(),
        )
    } else {
        let at = root.locate(&path)?;
        (at.parent, at.name)
    };
    let dir = if top.kind == EntryKind::Dir {
        Some(entries::open_dir(root, &path)?)
    } else {
        None
    };
    if send(conn, &Frame::Ack { stream: req.stream }).is_err() {
        return Ok(());
    }
    // From here on a failure can only close the connection: the archive
    // then lacks its end blocks, which the daemon turns into an error.
    if let Err(e) = write_archive(conn, &parent, &name, dir.as_ref(), &path) {
        eprintln!("warren-agent: tar download of {path} failed: {}", e.message);
    }
    Ok(())
}

/// A writer that fails every write once `broken` is set, so that after an
/// error nothing (in particular not the end blocks `tar::Builder` writes
/// when dropped) can make a cut-short archive look complete.
struct Breakable<W> {
    inner: W,
    broken: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<W: Write> Write for Breakable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.broken.get() {
            return Err(std::io::Error::other("archive aborted"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.broken.get() {
            return Err(std::io::Error::other("archive aborted"));
        }
        self.inner.flush()
    }
}

/// Streams the archive of `name` in `parent` (and, for a directory, of
/// everything below `dir`) to the connection.
fn write_archive(
    conn: &Conn,
    parent: &OwnedFd,
    name: &CStr,
    dir: Option<&OwnedFd>,
    path: &str,
) -> Result<(), FileError> {
    let broken = std::rc::Rc::new(std::cell::Cell::new(false));
    let out = Breakable {
        inner: BufWriter::with_capacity(BUFFER, conn.get_ref()),
        broken: broken.clone(),
    };
    let mut builder = tar::Builder::new(out);
    let result = write_entries(&mut builder, parent, name, dir, path);
    if result.is_err() {
        // Dropping the builder now writes nothing more.
        broken.set(true);
        return result;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(os_err(path))
}

/// The entries of [`write_archive`], without the end blocks.
fn write_entries<W: Write>(
    builder: &mut tar::Builder<W>,
    parent: &OwnedFd,
    name: &CStr,
    dir: Option<&OwnedFd>,
    path: &str,
) -> Result<(), FileError> {
    let base = path::split(path).1.to_string();
    if !base.is_empty() {
        let st = sys::lstatat(parent.as_raw_fd(), name).map_err(os_err(path))?;
        append(builder, parent.as_raw_fd(), name, &st, &base).map_err(os_err(path))?;
    }
    if let Some(dir) = dir {
        entries::walk_all(dir, path, &mut |v| {
            let archive_path = if base.is_empty() {
                v.relative.to_string()
            } else {
                format!("{base}/{}", v.relative)
            };
            append(builder, v.dir, v.name, v.st, &archive_path).map_err(os_err(v.path))?;
            Ok(true)
        })?;
    }
    Ok(())
}

/// The path of an archive entry as plain names, or an error for an absolute
/// path or a `..`.
fn entry_parts(name: &std::path::Path, dir: &str) -> Result<Vec<String>, FileError> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(FileError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "archive entry {:?} would land outside {dir}",
                        name.display()
                    ),
                ))
            }
        }
    }
    Ok(parts)
}

/// Removes a file or symlink at `name` so a new entry replaces it rather
/// than writing through it; a directory there is a conflict.
fn clear_for_file(dir: RawFd, name: &CStr, shown: &str) -> Result<(), FileError> {
    match sys::lstatat(dir, name) {
        Ok(st) if kind_of(st.st_mode) == EntryKind::Dir => Err(FileError::os(
            shown,
            &std::io::Error::from_raw_os_error(libc::EISDIR),
        )),
        Ok(_) => sys::unlinkat(dir, name, 0).map_err(os_err(shown)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(FileError::os(shown, &e)),
    }
}

pub fn upload(
    root: &Root,
    req: &TarUploadRequest,
    conn: &mut Conn,
) -> Result<Option<Frame>, FileError> {
    let dir_path = path::normalize(&req.dir)?;
    let dir = root.mkdir_all(&dir_path, 0o755)?;
    let mut chunks = ChunkReader::new(&mut *conn);
    let mut archive = tar::Archive::new(&mut chunks);
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut buf = vec![0u8; BUFFER];
    let entries = archive
        .entries()
        .map_err(|e| FileError::invalid(format!("bad tar archive: {e}")))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(FileError::invalid(format!("bad tar archive: {e}"))),
        };
        let name = entry
            .path()
            .map_err(|e| FileError::invalid(format!("bad tar entry name: {e}")))?
            .into_owned();
        let parts = entry_parts(&name, &dir_path)?;
        let Some((last, parents)) = parts.split_last() else {
            continue;
        };
        let shown = path::join(&dir_path, &parts.join("/"));
        let parent = path::mkdir_beneath(dir.as_raw_fd(), parents, 0o755, &dir_path)?;
        let at = parent.as_ref().map_or(dir.as_raw_fd(), |p| p.as_raw_fd());
        let last_c = path::cstring(last)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o1777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        match header.entry_type() {
            tar::EntryType::Directory => {
                match sys::mkdirat(at, &last_c, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(FileError::os(&shown, &e)),
                }
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                let d = sys::openat(at, &last_c, flags, 0).map_err(os_err(&shown))?;
                sys::fchmod(d.as_raw_fd(), mode).map_err(os_err(&shown))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| FileError::invalid(format!("bad tar link: {e}")))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                clear_for_file(at, &last_c, &shown)?;
                sys::symlinkat(&path::cstring(&target)?, at, &last_c).map_err(os_err(&shown))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // What may still be written; the header's size is only a
                // claim, so the copy counts the bytes it really writes.
                let room = req.max_bytes.map(|max| max.saturating_sub(bytes));
                if let (Some(max), Some(room)) = (req.max_bytes, room) {
                    if entry.size() > room {
                        return Err(too_large(max, &dir_path));
                    }
                }
                clear_for_file(at, &last_c, &shown)?;
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
                let fd = sys::openat(at, &last_c, flags, 0o600).map_err(os_err(&shown))?;
                let written = match copy_entry(&mut entry, &fd, &mut buf, room) {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        let _ = sys::unlinkat(at, &last_c, 0);
                        return Err(too_large(req.max_bytes.unwrap_or(0), &dir_path));
                    }
                    Err(e) => {
                        let _ = sys::unlinkat(at, &last_c, 0);
                        return Err(FileError::os(&shown, &e));
                    }
                };
                bytes = bytes.saturating_add(written);
                sys::fchmod(fd.as_raw_fd(), mode).map_err(os_err(&shown))?;
                let _ = sys::set_mtime(fd.as_raw_fd(), mtime);
            }
            // Hard links, devices, fifos: not unpacked.
            _ => continue,
        }
        count += 1;
    }
    // Padding after the end blocks, up to the end marker.
    if chunks.drain().is_err() {
        return Ok(None);
    }
    Ok(Some(Frame::TarUnpacked {
        stream: req.stream,
        entries: count,
        bytes,
    }))
}

fn too_large(max: u64, dir: &str) -> FileError {
    FileError::new(
        ErrorCode::TooLarge,
        format!("archive has more than {max} bytes of content: {dir}"),
    )
}

/// Copies `entry` into `fd`; `Ok(None)` (with at most `room` bytes
/// written) when it holds more than `room` bytes.
fn copy_entry(
    entry: &mut impl Read,
    fd: &OwnedFd,
    buf: &mut [u8],
    room: Option<u64>,
) -> std::io::Result<Option<u64>> {
    let mut file = std::fs::File::from(fd.try_clone()?);
    copy_limited(entry, &mut file, buf, room)
}

fn copy_limited(
    from: &mut impl Read,
    to: &mut impl Write,
    buf: &mut [u8],
    room: Option<u64>,
) -> std::io::Result<Option<u64>> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(Some(total)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let after = total.saturating_add(n as u64);
        if room.is_some_and(|room| after > room) {
            return Ok(None);
        }
        to.write_all(&buf[..n])?;
        total = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_stop_at_the_room_left_whatever_the_header_claims() {
        let mut buf = [0u8; 4];
        let mut out = Vec::new();
        let got = copy_limited(&mut &b"0123456789"[..], &mut out, &mut buf, Some(10)).unwrap();
        assert_eq!(got, Some(10));
        assert_eq!(out, b"0123456789");
        let mut out = Vec::new();
        let got = copy_limited(&mut &b"0123456789"[..], &mut out, &mut buf, Some(9)).unwrap();
        assert_eq!(got, None);
        assert!(out.len() <= 9, "{}", out.len());
        // An endless entry (a base-256 size of u64::MAX) is cut, not copied.
        let mut endless = std::io::repeat(b'x');
        let mut out = Vec::new();
        let got = copy_limited(&mut endless, &mut out, &mut buf, Some(1000)).unwrap();
        assert_eq!(got, None);
        assert!(out.len() <= 1000);
    }

    #[test]
    fn a_broken_archive_writer_writes_nothing_more() {
        let broken = std::rc::Rc::new(std::cell::Cell::new(false));
        let mut out = Vec::new();
        {
            let w = Breakable {
                inner: &mut out,
                broken: broken.clone(),
            };
            let mut builder = tar::Builder::new(w);
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            builder.append_data(&mut h, "a", &b"abc"[..]).unwrap();
            broken.set(true);
            // Dropping the builder tries to write the end blocks.
        }
        assert_eq!(out.len(), 1024, "header and one data block, no end blocks");
    }

    #[test]
    fn entry_names_must_stay_inside() {
        let ok = entry_parts(std::path::Path::new("./a/b/c.txt"), "/d").unwrap();
        assert_eq!(ok, ["a", "b", "c.txt"]);
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/.."] {
            let e = entry_parts(std::path::Path::new(bad), "/d").unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{bad}");
        }
    }
}
