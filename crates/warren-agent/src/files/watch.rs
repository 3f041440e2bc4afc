//! `file_watch`: inotify on a file or a directory (with `recursive`, every
//! subdirectory, including ones created or moved in later). Events go out
//! as `file_changed` frames until the daemon closes the connection; then
//! the inotify fd is closed, which removes every watch.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use warren_proto::{ChangeKind, EntryKind, FileChange, FileWatchRequest, Frame};

use super::entries::{self, kind_of};
use super::path::{self, Root};
use super::sys;
use super::{os_err, send, Conn, ErrorCode, FileError};

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_EXCL_UNLINK;

struct Watcher {
    inotify: OwnedFd,
    root: String,
    recursive: bool,
    /// Watch descriptor → the path it watches.
    paths: HashMap<i32, String>,
    stream: u64,
}

impl Watcher {
    /// Adds a watch on an open fd (through its /proc/self/fd link, the one
    /// way to inotify an fd) for `path`.
    fn add(&mut self, fd: &OwnedFd, path: &str) -> Result<(), FileError> {
        let link = path::cstring(&format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        // SAFETY: `link` is NUL-terminated; inotify_add_watch copies it.
        let wd = unsafe { libc::inotify_add_watch(self.inotify.as_raw_fd(), link.as_ptr(), MASK) };
        if wd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return Err(FileError::new(
                    ErrorCode::NoSpace,
                    format!("too many watches (fs.inotify.max_user_watches): {path}"),
                ));
            }
            return Err(FileError::os(path, &e));
        }
        self.paths.insert(wd, path.to_string());
        Ok(())
    }

    /// Adds watches for `dir` and every directory below it. Each
    /// subdirectory is watched as the walk reaches it and its fd closed
    /// right away, so a big tree never holds more fds than its depth.
    fn add_tree(&mut self, dir: &OwnedFd, path: &str) -> Result<(), FileError> {
        self.add(dir, path)?;
        entries::walk(dir, path, u32::MAX, &mut |v| {
            if kind_of(v.st.st_mode) == EntryKind::Dir {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                if let Ok(fd) = sys::openat(v.dir, v.name, flags, 0) {
                    // A directory gone meanwhile is no reason to fail the
                    // watch.
                    let _ = self.add(&fd, v.path);
                }
            }
            Ok(true)
        })
    }

    /// Watches a directory that appeared at `path` (best effort).
    fn add_new_dir(&mut self, root: &Root, path: &str) {
        if let Ok(dir) = entries::open_dir(root, path) {
            let _ = self.add_tree(&dir, path);
        }
    }

    /// Points the watches below a renamed directory at its new path.
    fn renamed_dir(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for p in self.paths.values_mut() {
            if p == from {
                *p = to.to_string();
            } else if let Some(rest) = p.strip_prefix(&prefix) {
                *p = format!("{to}/{rest}");
            }
        }
    }

    /// Drops the watches of a directory that left the tree.
    fn forget_dir(&mut self, gone: &str) {
        let prefix = format!("{gone}/");
        let wds: Vec<i32> = self
            .paths
            .iter()
            .filter(|(_, p)| *p == gone || p.starts_with(&prefix))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            // SAFETY: plain integer arguments.
            unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), wd) };
            self.paths.remove(&wd);
        }
    }

    fn change(&self, kind: ChangeKind, path: String, from: Option<String>, is_dir: bool) -> Frame {
        Frame::FileChanged(FileChange {
            stream: self.stream,
            kind,
            path,
            from,
            is_dir,
        })
    }

    /// Turns one buffer of inotify events into changes. A `moved_from`
    /// whose `moved_to` (same cookie) is in the same batch is a rename;
    /// otherwise it is a deletion (and a lone `moved_to` a creation).
    fn translate(&mut self, root: &Root, events: &[RawEvent]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut moved_from: Vec<(u32, String, bool)> = Vec::new();
        for ev in events {
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                out.push(self.change(ChangeKind::Overflow, self.root.clone(), None, false));
                continue;
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                self.paths.remove(&ev.wd);
                continue;
            }
            let Some(base) = self.paths.get(&ev.wd).cloned() else {
                continue;
            };
            let is_dir = ev.mask & libc::IN_ISDIR != 0;
            let path = if ev.name.is_empty() {
                base.clone()
            } else {
                path::join(&base, &ev.name)
            };
            if ev.mask & libc::IN_DELETE_SELF != 0 {
                // A subdirectory's deletion was already reported by its parent.
                if base == self.root {
                    out.push(self.change(ChangeKind::Deleted, path, None, is_dir));
                }
                continue;
            }
            if ev.mask & libc::IN_CREATE != 0 {
                if is_dir && self.recursive {
                    self.add_new_dir(root, &path);
                }
                out.push(self.change(ChangeKind::Created, path, None, is_dir));
            } else if ev.mask & libc::IN_MOVED_FROM != 0 {
                moved_from.push((ev.cookie, path, is_dir));
            } else if ev.mask & libc::IN_MOVED_TO != 0 {
                match moved_from.iter().position(|(c, _, _)| *c == ev.cookie) {
                    Some(i) => {
                        let (_, from, _) = moved_from.remove(i);
                        if is_dir {
                            self.renamed_dir(&from, &path);
                        }
                        out.push(self.change(ChangeKind::Renamed, path, Some(from), is_dir));
                    }
                    None => {
                        if is_dir && self.recursive {
                            self.add_new_dir(root, &path);
                        }
                        out.push(self.change(ChangeKind::Created, path, None, is_dir));
                    }
                }
            } else if ev.mask & libc::IN_DELETE != 0 {
                out.push(self.change(ChangeKind::Deleted, path, None, is_dir));
            } else if ev.mask & (libc::IN_CLOSE_WRITE | libc::IN_ATTRIB) != 0 {
                out.push(self.change(ChangeKind::Modified, path, None, is_dir));
            }
        }
        for (_, from, is_dir) in moved_from {
            if is_dir {
                self.forget_dir(&from);
            }
            out.push(self.change(ChangeKind::Deleted, from, None, is_dir));
        }
        out
    }
}

/// One parsed `struct inotify_event`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub wd: i32,
    pub mask: u32,
    pub cookie: u32,
    pub name: String,
}

/// Parses a buffer filled by `read(inotify_fd)`.
pub fn parse_events(buf: &[u8]) -> Vec<RawEvent> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut events = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        // SAFETY: HEADER bytes are in bounds; read_unaligned copes with the
        // buffer's alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let name_end = (at + HEADER + ev.len as usize).min(buf.len());
        let raw_name = &buf[at + HEADER..name_end];
        let name_len = raw_name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(raw_name.len());
        events.push(RawEvent {
            wd: ev.wd,
            mask: ev.mask,
            cookie: ev.cookie,
            name: String::from_utf8_lossy(&raw_name[..name_len]).into_owned(),
        });
        at = name_end;
    }
    events
}

pub fn watch(root: &Root, req: &FileWatchRequest, conn: &Conn) -> Result<(), FileError> {
    let path = path::normalize(&req.path)?;
    let target = root.open_path(&path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?;
    let st = sys::fstat(target.as_raw_fd()).map_err(os_err(&path))?;
    // SAFETY: inotify_init1 with flags only; a non-negative result is ours.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(FileError::os(&path, &std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let inotify = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut watcher = Watcher {
        inotify,
        root: path.clone(),
        recursive: req.recursive,
        paths: HashMap::new(),
        stream: req.stream,
    };
    if kind_of(st.st_mode) == EntryKind::Dir && req.recursive {
        watcher.add_tree(&target, &path)?;
    } else {
        watcher.add(&target, &path)?;
    }
    drop(target);
    if send(conn, &Frame::Ack { stream: req.stream }).is_err() {
        return Ok(());
    }
    let sock = conn.get_ref();
    let mut events = std::fs::File::from(watcher.inotify.try_clone().map_err(os_err(&path))?);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: watcher.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Ok(());
        }
        if fds[1].revents != 0 {
            // The daemon never sends after the request: readable means gone.
            return Ok(());
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        let got = match events.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(FileError::os(&path, &e)),
        };
        for frame in watcher.translate(root, &parse_events(&buf[..got])) {
            if send(conn, &frame).is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(wd: i32, mask: u32, cookie: u32, name: &str) -> Vec<u8> {
        let padded = (name.len() + 1).div_ceil(16) * 16;
        let ev = libc::inotify_event {
            wd,
            mask,
            cookie,
            len: if name.is_empty() { 0 } else { padded as u32 },
        };
        // SAFETY: inotify_event is plain data; view it as bytes.
        let head: [u8; 16] = unsafe { std::mem::transmute(ev) };
        let mut out = head.to_vec();
        if !name.is_empty() {
            let mut n = name.as_bytes().to_vec();
            n.resize(padded, 0);
            out.extend(n);
        }
        out
    }

    /// Restores the fd limit when dropped.
    struct NoFileLimit(libc::rlimit);

    impl Drop for NoFileLimit {
        fn drop(&mut self) {
            // SAFETY: a valid rlimit struct.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
        }
    }

    #[test]
    fn a_recursive_watch_of_more_dirs_than_fds_watches_them_all() {
        let max_watches: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if max_watches < 10_000 {
            eprintln!("skipped: fs.inotify.max_user_watches is only {max_watches}");
            return;
        }
        let top = std::env::temp_dir().join(format!("warren-watch-{}", std::process::id()));
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(top.clone());
        for i in 0..300 {
            for j in 0..5 {
                std::fs::create_dir_all(top.join(format!("d{i}/e{j}"))).unwrap();
            }
        }
        // Fewer fds than directories (1800): collecting them all first
        // would fail with EMFILE.
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid out pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let _restore = NoFileLimit(old);
        let low = libc::rlimit {
            rlim_cur: old.rlim_cur.min(1024),
            rlim_max: old.rlim_max,
        };
        // SAFETY: a valid rlimit struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);

        // SAFETY: inotify_init1 with flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let mut w = Watcher {
            // SAFETY: fresh fd.
            inotify: unsafe { OwnedFd::from_raw_fd(fd) },
            root: "/t".into(),
            recursive: true,
            paths: HashMap::new(),
            stream: 1,
        };
        let dir = sys::openat(
            libc::AT_FDCWD,
            &path::cstring(top.to_str().unwrap()).unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        w.add_tree(&dir, "/t").unwrap();
        assert_eq!(w.paths.len(), 1 + 300 * 6);
        assert!(w.paths.values().any(|p| p == "/t/d299/e4"));
    }

    #[test]
    fn events_parse_and_pair_renames_by_cookie() {
        let mut buf = raw(1, libc::IN_CREATE, 0, "new.txt");
        buf.extend(raw(1, libc::IN_MOVED_FROM, 7, "a"));
        buf.extend(raw(1, libc::IN_MOVED_TO, 7, "b"));
        buf.extend(raw(1, libc::IN_MOVED_FROM, 9, "gone"));
        buf.extend(raw(1, libc::IN_CLOSE_WRITE, 0, "new.txt"));
        buf.extend(raw(1, libc::IN_Q_OVERFLOW, 0, ""));
        let events = parse_events(&buf);
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].name, "new.txt");
        let Ok(root) = Root::open() else { return };
        // SAFETY: inotify_init1 with flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let mut w = Watcher {
            // SAFETY: fresh fd.
            inotify: unsafe { OwnedFd::from_raw_fd(fd) },
            root: "/w".into(),
            recursive: false,
            paths: HashMap::from([(1, "/w".to_string())]),
            stream: 3,
        };
        let kinds: Vec<(ChangeKind, String, Option<String>)> = w
            .translate(&root, &events)
            .into_iter()
            .map(|f| match f {
                Frame::FileChanged(c) => (c.kind, c.path, c.from),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Created, "/w/new.txt".into(), None),
                (ChangeKind::Renamed, "/w/b".into(), Some("/w/a".into())),
                (ChangeKind::Modified, "/w/new.txt".into(), None),
                (ChangeKind::Overflow, "/w".into(), None),
                (ChangeKind::Deleted, "/w/gone".into(), None),
            ]
        );
    }
}
