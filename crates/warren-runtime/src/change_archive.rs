//! A sandbox's changes as an OCI-layer tar: added and modified entries with
//! their content, deletions as `.wh.NAME`, opaque directories marked with
//! `.wh..wh..opq`. Written by a blocking thread into a pipe whose read end
//! is the returned stream, so the archive is never held in memory.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::changes::ChangeKind;
use crate::changes_scan::{ChangedEntry, EntryStat, EntryType};
use crate::rooted_dir::{self, RootedDir};

/// The kernel's overflow id, shown for host ids outside the sandbox's range.
const OVERFLOW_ID: u32 = 65534;

/// Maps host uids/gids of the upper directory to the sandbox's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdShift {
    /// Host id of the sandbox's id 0.
    pub base: u32,
    /// Number of mapped ids.
    pub count: u32,
}

impl IdShift {
    fn inside(self, host: u32) -> u32 {
        match host.checked_sub(self.base) {
            Some(n) if n < self.count => n,
            _ => OVERFLOW_ID,
        }
    }
}

fn header_for(kind: tar::EntryType, stat: &EntryStat, ids: IdShift) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.mode);
    header.set_uid(u64::from(ids.inside(stat.uid)));
    header.set_gid(u64::from(ids.inside(stat.gid)));
    header.set_mtime(u64::try_from(stat.mtime).unwrap_or(0));
    header.set_size(0);
    header
}

fn whiteout_path(rel: &Path) -> PathBuf {
    let mut name = OsString::from(".wh.");
    name.push(rel.file_name().unwrap_or_default());
    rel.with_file_name(name)
}

/// Writes the archive of `entries` (as returned by
/// [`crate::changes_scan::scan`]) read from `upper`. Entries that vanished
/// since the scan are left out; a file that shrank is padded with zeros and
/// one that grew is cut at its size when opened, so the archive stays valid.
pub(crate) fn write_layer_tar<W: Write>(
    upper: &RootedDir,
    entries: &[ChangedEntry],
    ids: IdShift,
    out: W,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    for entry in entries {
        append_entry(&mut tar, upper, entry, ids)?;
    }
    tar.into_inner()
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    upper: &RootedDir,
    entry: &ChangedEntry,
    ids: IdShift,
) -> io::Result<()> {
    let rel = entry.rel.as_path();
    if entry.change.kind == ChangeKind::Deleted {
        let mut header = header_for(tar::EntryType::Regular, &EntryStat::default(), ids);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        return tar.append_data(&mut header, whiteout_path(rel), io::empty());
    }
    match entry.entry {
        EntryType::Dir { opaque } => {
            let mut header = header_for(tar::EntryType::Directory, &entry.stat, ids);
            tar.append_data(&mut header, rel, io::empty())?;
            if opaque && entry.change.kind == ChangeKind::Modified {
                let mut marker = header_for(tar::EntryType::Regular, &EntryStat::default(), ids);
                marker.set_mode(0o644);
                marker.set_uid(0);
                marker.set_gid(0);
                tar.append_data(&mut marker, rel.join(".wh..wh..opq"), io::empty())?;
            }
            Ok(())
        }
        EntryType::File => append_file(tar, upper, rel, ids),
        EntryType::Symlink => {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let Some(name) = rel.file_name() else {
                return Ok(());
            };
            let dir = match upper.open_at(parent, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if rooted_dir::is_gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let target = match rooted_dir::read_link_at(dir.as_fd(), name) {
                Ok(t) => t,
                // Gone, or no longer a symlink (EINVAL).
                Err(e) if rooted_dir::is_gone(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            };
            let mut header = header_for(tar::EntryType::Symlink, &entry.stat, ids);
            tar.append_link(&mut header, rel, target)
        }
        EntryType::Fifo => {
            let mut header = header_for(tar::EntryType::Fifo, &entry.stat, ids);
            tar.append_data(&mut header, rel, io::empty())
        }
        EntryType::Other => append_device(tar, rel, &entry.stat, ids),
        // Deleted is handled above; a whiteout is never anything else.
        EntryType::Whiteout => Ok(()),
    }
}

fn append_device<W: Write>(
    tar: &mut tar::Builder<W>,
    rel: &Path,
    stat: &EntryStat,
    ids: IdShift,
) -> io::Result<()> {
    let kind = match stat.format {
        libc::S_IFCHR => tar::EntryType::Char,
        libc::S_IFBLK => tar::EntryType::Block,
        // Sockets have no tar form; they are listed but not archived.
        _ => return Ok(()),
    };
    let mut header = header_for(kind, stat, ids);
    header.set_device_major(libc::major(stat.rdev))?;
    header.set_device_minor(libc::minor(stat.rdev))?;
    tar.append_data(&mut header, rel, io::empty())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    upper: &RootedDir,
    rel: &Path,
    ids: IdShift,
) -> io::Result<()> {
    let fd = match upper.open_at(rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY) {
        Ok(fd) => fd,
        Err(e) if rooted_dir::is_gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = rooted_dir::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(()); // replaced by something else since the scan
    }
    let stat = EntryStat::from(&st);
    let mut header = header_for(tar::EntryType::Regular, &stat, ids);
    header.set_size(stat.size);
    let file = File::from(fd);
    let exact = file.take(stat.size).chain(io::repeat(0)).take(stat.size);
    tar.append_data(&mut header, rel, exact)
}

/// Starts a thread writing the archive into a pipe; returns the read end.
/// A failure of the writer surfaces as a read error at the end of the
/// stream (never as a silently short archive).
pub(crate) fn spawn_layer_tar(
    upper: RootedDir,
    entries: Vec<ChangedEntry>,
    ids: IdShift,
) -> io::Result<LayerTarStream> {
    let (read_end, write_end) = pipe_pair()?;
    let receiver = pipe::Receiver::from_owned_fd(read_end)?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("warren-changes-tar".into())
        .spawn(move || {
            let result = write_layer_tar(&upper, &entries, ids, File::from(write_end))
                .and_then(|mut w| w.flush());
            if let Err(e) = &result {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    tracing::warn!(error = %e, "writing a changes archive failed");
                }
            }
            let _ = done_tx.send(result.map(drop));
        })?;
    Ok(LayerTarStream {
        pipe: receiver,
        done: Some(done_rx),
    })
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe means fewer wake-ups; the default size works too.
    // SAFETY: fcntl on a pipe fd we own, with an integer argument.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((r, w))
}

/// The read end of a changes archive.
pub(crate) struct LayerTarStream {
    pipe: pipe::Receiver,
    done: Option<oneshot::Receiver<io::Result<()>>>,
}

impl AsyncRead for LayerTarStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.pipe).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // End of the pipe: the writer finished, or failed.
        let Some(done) = this.done.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = ready!(Pin::new(done).poll(cx));
        this.done = None;
        Poll::Ready(match outcome {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the changes archive writer stopped")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes_scan::{scan, OverlayLayers};

    #[test]
    fn ids_outside_the_range_become_the_overflow_id() {
        let ids = IdShift {
            base: 1000,
            count: 10,
        };
        assert_eq!(ids.inside(1000), 0);
        assert_eq!(ids.inside(1009), 9);
        assert_eq!(ids.inside(1010), OVERFLOW_ID);
        assert_eq!(ids.inside(0), OVERFLOW_ID);
    }

    #[test]
    fn whiteout_names_sit_next_to_the_deleted_entry() {
        assert_eq!(
            whiteout_path(Path::new("var/log")),
            PathBuf::from("var/.wh.log")
        );
        assert_eq!(whiteout_path(Path::new("top")), PathBuf::from(".wh.top"));
    }

    #[test]
    fn archive_holds_content_symlinks_and_never_follows_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(upper.join("work/sub")).unwrap();
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(upper.join("work/sub/a.txt"), "hello").unwrap();
        std::fs::write(tmp.path().join("host-secret"), "SECRET").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("host-secret"), upper.join("work/link"))
            .unwrap();
        let layers = OverlayLayers {
            upper: upper.clone(),
            lowers: vec![lower],
        };
        let entries = scan(&layers).unwrap();
        let me = std::fs::metadata(&upper).unwrap();
        let ids = IdShift {
            base: std::os::unix::fs::MetadataExt::uid(&me),
            count: 65536,
        };
        let bytes =
            write_layer_tar(&RootedDir::open(&upper).unwrap(), &entries, ids, Vec::new()).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"SECRET"));
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let mut content = String::new();
            if kind.is_file() {
                e.read_to_string(&mut content).unwrap();
            }
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            assert_eq!(e.header().uid().unwrap(), 0, "{path}");
            seen.push((path, kind, content, link));
        }
        assert_eq!(
            seen,
            vec![
                (
                    "work".into(),
                    tar::EntryType::Directory,
                    String::new(),
                    None
                ),
                (
                    "work/link".into(),
                    tar::EntryType::Symlink,
                    String::new(),
                    Some(tmp.path().join("host-secret").display().to_string())
                ),
                (
                    "work/sub".into(),
                    tar::EntryType::Directory,
                    String::new(),
                    None
                ),
                (
                    "work/sub/a.txt".into(),
                    tar::EntryType::Regular,
                    "hello".into(),
                    None
                ),
            ]
        );
    }

    #[test]
    fn entries_swapped_for_symlinks_after_the_scan_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(upper.join("dir")).unwrap();
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(upper.join("dir/f"), "mine").unwrap();
        std::fs::write(upper.join("g"), "mine").unwrap();
        let secret_dir = tmp.path().join("host");
        std::fs::create_dir_all(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("f"), "HOSTSECRET").unwrap();
        let layers = OverlayLayers {
            upper: upper.clone(),
            lowers: vec![lower],
        };
        let entries = scan(&layers).unwrap();
        // The sandbox swaps a parent directory and a file for symlinks to
        // host paths between the scan and the archive.
        std::fs::remove_dir_all(upper.join("dir")).unwrap();
        std::os::unix::fs::symlink(&secret_dir, upper.join("dir")).unwrap();
        std::fs::remove_file(upper.join("g")).unwrap();
        std::os::unix::fs::symlink(secret_dir.join("f"), upper.join("g")).unwrap();
        let ids = IdShift { base: 0, count: 1 };
        let bytes =
            write_layer_tar(&RootedDir::open(&upper).unwrap(), &entries, ids, Vec::new()).unwrap();
        assert!(!bytes.windows(10).any(|w| w == b"HOSTSECRET"));
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        // Only the directory entry (from its scan-time metadata) is left.
        assert_eq!(names, vec!["dir"]);
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_archive_trailer() {
        use tokio::io::AsyncReadExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big"), vec![7u8; 3 << 20]).unwrap();
        let lower = tempfile::tempdir().unwrap();
        let layers = OverlayLayers {
            upper: tmp.path().into(),
            lowers: vec![lower.path().into()],
        };
        let entries = scan(&layers).unwrap();
        let ids = IdShift { base: 0, count: 1 };
        let mut stream =
            spawn_layer_tar(RootedDir::open(tmp.path()).unwrap(), entries, ids).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut big = entries.next().unwrap().unwrap();
        let mut content = Vec::new();
        big.read_to_end(&mut content).unwrap();
        assert_eq!(content.len(), 3 << 20);
        assert!(entries.next().is_none());
        // 512-byte header + data + two zero blocks, padded to a 10 KiB record.
        assert!(bytes.len() >= 512 + (3 << 20) + 1024);
    }
}
