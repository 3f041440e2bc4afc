//! Bulk transfers: `file_read` streams a file's bytes raw after its
//! `file_info` header (sendfile when the kernel allows); `file_write`
//! receives chunks into a temporary file next to the target and renames it
//! into place only once everything arrived.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use warren_proto::{ChunkReader, EntryKind, FileReadRequest, FileWriteRequest, Frame};

use super::entries::{entry_of, kind_of};
use super::path::{self, Root};
use super::sys;
use super::{os_err, send, Conn, ErrorCode, FileError};

/// Copy buffer size for bulk data.
pub const BUFFER: usize = 256 * 1024;

pub fn read(root: &Root, req: &FileReadRequest, conn: &Conn) -> Result<(), FileError> {
    let path = path::normalize(&req.path)?;
    // O_NONBLOCK: opening a fifo must not hang; it is refused below anyway.
    // O_NOCTTY: opening a terminal must not make it ours.
    let file = root.open_path(&path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?;
    let st = sys::fstat(file.as_raw_fd()).map_err(os_err(&path))?;
    match kind_of(st.st_mode) {
        EntryKind::File => {}
        EntryKind::Dir => {
            return Err(FileError::os(
                &path,
                &std::io::Error::from_raw_os_error(libc::EISDIR),
            ))
        }
        _ => return Err(FileError::invalid(format!("not a regular file: {path}"))),
    }
    let size = st.st_size.max(0) as u64;
    let available = size.saturating_sub(req.offset);
    let count = req.len.map_or(available, |len| len.min(available));
    let header = Frame::FileInfo {
        stream: req.stream,
        entry: entry_of(&path, &st, None),
    };
    if send(conn, &header).is_err() {
        return Ok(());
    }
    // Past the header nothing can be reported: a failure closes the
    // connection early and the daemon sees fewer bytes than announced.
    let _ = send_range(&file, conn.get_ref(), req.offset, count);
    Ok(())
}

/// Sends `count` bytes of `file` from `offset` to the socket `out`.
fn send_range(file: &OwnedFd, out: &UnixStream, offset: u64, count: u64) -> std::io::Result<()> {
    let mut pos = i64::try_from(offset).map_err(std::io::Error::other)?;
    let mut left = count;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        match sys::sendfile(out.as_raw_fd(), file.as_raw_fd(), &mut pos, want) {
            Ok(0) => return Ok(()), // the file shrank
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                return copy_range(file, out, pos as u64, left);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The read/write fallback of [`send_range`] (file systems without sendfile).
fn copy_range(
    file: &OwnedFd,
    mut out: &UnixStream,
    offset: u64,
    count: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(file.try_clone()?);
    let mut buf = vec![0u8; BUFFER];
    let (mut pos, mut left) = (offset, count);
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        pos += n as u64;
        left -= n as u64;
    }
    Ok(())
}

/// A temporary file that is removed unless it was renamed into place.
struct TempFile<'a> {
    dir: &'a OwnedFd,
    name: CString,
    keep: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = sys::unlinkat(self.dir.as_raw_fd(), &self.name, 0);
        }
    }
}

/// `.NAME.warren-tmp-XXXXXXXX`, short enough for NAME_MAX.
fn temp_name(name: &str) -> String {
    let mut random = [0u8; 4];
    // SAFETY: `random` is a live buffer of the length passed.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if got != 4 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        random = (nanos ^ std::process::id()).to_be_bytes();
    }
    let short = super::search::cut_line(name, 200);
    format!(".{short}.warren-tmp-{:08x}", u32::from_be_bytes(random))
}

/// Whether this thread acts as root (then it may keep a replaced file's owner).
fn acting_as_root() -> bool {
    // SAFETY: setfsuid(-1) changes nothing and returns the current fsuid.
    unsafe { libc::syscall(libc::SYS_setfsuid, -1i32 as u32) == 0 }
}

pub fn write(
    root: &Root,
    req: &FileWriteRequest,
    conn: &mut Conn,
) -> Result<Option<Frame>, FileError> {
    let path = path::normalize(&req.path)?;
    if path == "/" {
        return Err(FileError::new(ErrorCode::Conflict, "is a directory: /"));
    }
    let (dir_path, name) = path::split(&path);
    let dir = root.mkdir_all(dir_path, 0o755)?;
    let name_c = path::cstring(name)?;
    let existing = match sys::lstatat(dir.as_raw_fd(), &name_c) {
        Ok(st) if kind_of(st.st_mode) == EntryKind::Dir => {
            return Err(FileError::os(
                &path,
                &std::io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        Ok(st) if kind_of(st.st_mode) == EntryKind::File => Some(st),
        Ok(_) => None, // a symlink or other entry is replaced, never written through
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(FileError::os(&path, &e)),
    };
    let mode = req
        .mode
        .or(existing.map(|st| st.st_mode & 0o7777))
        .unwrap_or(0o644)
        & 0o7777;
    let temp = TempFile {
        dir: &dir,
        name: path::cstring(&temp_name(name))?,
        keep: false,
    };
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let fd = sys::openat(dir.as_raw_fd(), &temp.name, flags, 0o600).map_err(os_err(&path))?;
    let mut file = std::fs::File::from(fd);
    let mut chunks = ChunkReader::new(&mut *conn);
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match chunks.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The daemon aborted: the temp file goes, nobody to answer.
            Err(_) => return Ok(None),
        };
        total += n as u64;
        if let Some(max) = req.max_bytes {
            if total > max {
                return Err(FileError::new(
                    ErrorCode::TooLarge,
                    format!("more than {max} bytes: {path}"),
                ));
            }
        }
        file.write_all(&buf[..n]).map_err(os_err(&path))?;
    }
    sys::fchmod(file.as_raw_fd(), mode).map_err(os_err(&path))?;
    if let Some(old) = existing {
        if acting_as_root() {
            let _ = sys::fchown(file.as_raw_fd(), old.st_uid, old.st_gid);
        }
    }
    sys::renameat2(dir.as_raw_fd(), &temp.name, dir.as_raw_fd(), &name_c, 0)
        .map_err(os_err(&path))?;
    let mut temp = temp;
    temp.keep = true;
    let st = sys::fstat(file.as_raw_fd()).map_err(os_err(&path))?;
    Ok(Some(Frame::FileInfo {
        stream: req.stream,
        entry: entry_of(&path, &st, None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_unique_and_bounded() {
        let a = temp_name("a.txt");
        assert!(a.starts_with(".a.txt.warren-tmp-") && a.len() == ".a.txt.warren-tmp-".len() + 8);
        assert_ne!(a, temp_name("a.txt"));
        assert!(temp_name(&"x".repeat(255)).len() <= 255);
    }
}
