//! Classifying an overlay's upper directory against its lower layers: which
//! entries are additions, modifications and deletions. Pure host-side file
//! system reads; nothing is ever followed through a symlink (see
//! [`crate::rooted_dir`]), because the sandbox controls every entry of its
//! upper directory.

use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::changes::{Change, ChangeKind};
use crate::rooted_dir::{self, RootedDir};

const WHITEOUT_XATTRS: [&CStr; 2] = [c"user.overlay.whiteout", c"trusted.overlay.whiteout"];
const OPAQUE_XATTRS: [&CStr; 2] = [c"user.overlay.opaque", c"trusted.overlay.opaque"];

/// The directories of one overlay root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverlayLayers {
    /// The writable upper directory.
    pub upper: PathBuf,
    /// Read-only lower directories, top first.
    pub lowers: Vec<PathBuf>,
}

/// What an upper entry is, as far as changes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    /// Regular file.
    File,
    /// Directory; `opaque` hides whatever the lowers have at this path.
    Dir {
        /// Marked opaque by overlayfs.
        opaque: bool,
    },
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character or block device, or socket.
    Other,
    /// Overlay whiteout: the lower entry is deleted.
    Whiteout,
}

/// One change found in the upper directory, with what the archive needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangedEntry {
    /// Path relative to the root (no leading `/`), raw bytes.
    pub rel: PathBuf,
    /// The change as reported to users.
    pub change: Change,
    /// Kind of the upper entry.
    pub entry: EntryType,
    /// `lstat` of the upper entry (host uids and gids).
    pub stat: EntryStat,
}

/// The parts of `lstat` the archive uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EntryStat {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size in bytes.
    pub size: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// File type bits (`S_IFMT` part of the mode).
    pub format: u32,
}

impl From<&libc::stat> for EntryStat {
    fn from(st: &libc::stat) -> Self {
        Self {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            size: u64::try_from(st.st_size).unwrap_or(0),
            rdev: st.st_rdev,
            format: st.st_mode & libc::S_IFMT,
        }
    }
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn is_dir(st: &libc::stat) -> bool {
    file_type(st) == libc::S_IFDIR
}

/// A whiteout: a 0:0 character device, or (newer overlayfs, nested
/// overlays) an empty regular file carrying an `overlay.whiteout` xattr.
fn is_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &libc::stat) -> io::Result<bool> {
    match file_type(st) {
        libc::S_IFCHR => Ok(st.st_rdev == 0),
        libc::S_IFREG if st.st_size == 0 => {
            let fd = match rooted_dir::open_child(
                dir,
                name,
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            ) {
                Ok(fd) => fd,
                Err(e) if rooted_dir::is_gone(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            has_any_xattr(fd.as_fd(), &WHITEOUT_XATTRS, |_| true)
        }
        _ => Ok(false),
    }
}

fn has_any_xattr(
    fd: BorrowedFd<'_>,
    names: &[&CStr],
    accept: impl Fn(&[u8]) -> bool,
) -> io::Result<bool> {
    for name in names {
        if rooted_dir::xattr(fd, name)?.is_some_and(|v| accept(&v)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opaque directories carry `overlay.opaque=y` (`x` only means "holds xattr
/// whiteouts" and is not opaque).
fn is_opaque(dir_fd: BorrowedFd<'_>) -> io::Result<bool> {
    has_any_xattr(dir_fd, &OPAQUE_XATTRS, |v| v == b"y")
}

/// Lower layers, opened once.
struct Lowers {
    layers: Vec<RootedDir>,
}

/// What one lower layer says about a path.
enum LayerAnswer {
    /// The entry is here.
    Found(libc::stat),
    /// This layer hides the path (a whiteout, or a non-directory ancestor).
    Hidden,
    /// Not in this layer; `opaque` when an ancestor here hides lower layers.
    Missing { opaque: bool },
}

impl Lowers {
    fn open(paths: &[PathBuf]) -> io::Result<Self> {
        let layers = paths
            .iter()
            .map(|p| {
                RootedDir::open(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("open lower layer {}: {e}", p.display()))
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { layers })
    }

    /// The merged view of the lowers at `rel`, as overlayfs would see it.
    fn lookup(&self, names: &[&OsStr]) -> io::Result<Option<libc::stat>> {
        for layer in &self.layers {
            match lookup_in_layer(layer, names)? {
                LayerAnswer::Found(st) => return Ok(Some(st)),
                LayerAnswer::Hidden | LayerAnswer::Missing { opaque: true } => return Ok(None),
                LayerAnswer::Missing { opaque: false } => {}
            }
        }
        Ok(None)
    }
}

fn lookup_in_layer(layer: &RootedDir, names: &[&OsStr]) -> io::Result<LayerAnswer> {
    let mut dir: Option<OwnedFd> = None;
    let mut opaque = false;
    for (i, name) in names.iter().enumerate() {
        let dir_fd = dir.as_ref().map_or(layer.fd(), |d| d.as_fd());
        let st = match rooted_dir::lstat_at(dir_fd, name) {
            Ok(st) => st,
            Err(e) if rooted_dir::is_gone(&e) => return Ok(LayerAnswer::Missing { opaque }),
            Err(e) => return Err(e),
        };
        if is_whiteout(dir_fd, name, &st)? {
            return Ok(LayerAnswer::Hidden);
        }
        if i + 1 == names.len() {
            return Ok(LayerAnswer::Found(st));
        }
        if !is_dir(&st) {
            return Ok(LayerAnswer::Hidden);
        }
        let child = match rooted_dir::open_child(dir_fd, name, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if rooted_dir::is_gone(&e) => return Ok(LayerAnswer::Missing { opaque }),
            Err(e) => return Err(e),
        };
        opaque |= is_opaque(child.as_fd())?;
        dir = Some(child);
    }
    // `names` is empty: the root itself, present in every layer.
    rooted_dir::fstat(layer.fd()).map(LayerAnswer::Found)
}

fn names_of(rel: &Path) -> Vec<&OsStr> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn classify_upper(dir: BorrowedFd<'_>, name: &OsStr, st: &libc::stat) -> io::Result<EntryType> {
    if is_whiteout(dir, name, st)? {
        return Ok(EntryType::Whiteout);
    }
    Ok(match file_type(st) {
        libc::S_IFREG => EntryType::File,
        libc::S_IFDIR => {
            let fd = match rooted_dir::open_child(dir, name, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(fd) => fd,
                // Replaced by something else since the lstat: not opaque.
                Err(e) if rooted_dir::is_gone(&e) => return Ok(EntryType::Dir { opaque: false }),
                Err(e) => return Err(e),
            };
            EntryType::Dir {
                opaque: is_opaque(fd.as_fd())?,
            }
        }
        libc::S_IFLNK => EntryType::Symlink,
        libc::S_IFIFO => EntryType::Fifo,
        _ => EntryType::Other,
    })
}

/// Upper entries that are not changes of the sandbox: names overlayfs
/// reserves.
fn is_internal(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".wh.")
}

/// Every change in `layers.upper`, sorted by path. Entries that vanish or
/// turn into symlinks while the walk runs (the sandbox keeps running) are
/// skipped.
pub(crate) fn scan(layers: &OverlayLayers) -> io::Result<Vec<ChangedEntry>> {
    let upper = RootedDir::open(&layers.upper).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("open upper directory {}: {e}", layers.upper.display()),
        )
    })?;
    let lowers = Lowers::open(&layers.lowers)?;
    let mut found = Vec::new();
    // Directories still to read: path relative to the root, and whether the
    // lowers are hidden there (an opaque, added or replaced directory above).
    let mut pending: Vec<(PathBuf, bool)> = vec![(PathBuf::new(), false)];
    while let Some((rel, lowers_hidden)) = pending.pop() {
        let dir = match upper.open_at(&rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if rooted_dir::is_gone(&e) && !rel.as_os_str().is_empty() => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("open {}: {e}", rel.display()),
                ))
            }
        };
        for name in rooted_dir::entry_names(dir.as_fd())? {
            if is_internal(&name) {
                continue;
            }
            let st = match rooted_dir::lstat_at(dir.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if rooted_dir::is_gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let entry = classify_upper(dir.as_fd(), &name, &st)?;
            let child = rel.join(&name);
            let lower = if lowers_hidden {
                None
            } else {
                lowers.lookup(&names_of(&child))?
            };
            if let EntryType::Dir { opaque } = entry {
                // Below a directory the lowers lack (or have as a non-directory,
                // or that is opaque), no lower entry can show through.
                let lower_dir = lower.as_ref().is_some_and(is_dir);
                pending.push((child.clone(), lowers_hidden || opaque || !lower_dir));
            }
            if let Some(kind) = change_kind(entry, &st, lower.as_ref()) {
                found.push(changed_entry(child, kind, entry, &st, lower.as_ref()));
            }
        }
    }
    found.sort_by(|a, b| a.rel.as_os_str().cmp(b.rel.as_os_str()));
    Ok(found)
}

/// How an upper entry changes the merged view, `None` when it does not (a
/// directory copied up only because something below it changed).
fn change_kind(
    entry: EntryType,
    st: &libc::stat,
    lower: Option<&libc::stat>,
) -> Option<ChangeKind> {
    match (entry, lower) {
        (EntryType::Whiteout, None) => None,
        (EntryType::Whiteout, Some(_)) => Some(ChangeKind::Deleted),
        (_, None) => Some(ChangeKind::Added),
        (EntryType::Dir { opaque }, Some(l)) => {
            let same_dir = is_dir(l)
                && !opaque
                && (l.st_mode & 0o7777, l.st_uid, l.st_gid)
                    == (st.st_mode & 0o7777, st.st_uid, st.st_gid);
            (!same_dir).then_some(ChangeKind::Modified)
        }
        (_, Some(_)) => Some(ChangeKind::Modified),
    }
}

fn changed_entry(
    rel: PathBuf,
    kind: ChangeKind,
    entry: EntryType,
    st: &libc::stat,
    lower: Option<&libc::stat>,
) -> ChangedEntry {
    let is_dir_now = match entry {
        EntryType::Whiteout => lower.is_some_and(is_dir),
        EntryType::Dir { .. } => true,
        _ => false,
    };
    let size = match entry {
        EntryType::File => u64::try_from(st.st_size).unwrap_or(0),
        _ => 0,
    };
    let mut path = OsString::from("/");
    path.push(rel.as_os_str());
    ChangedEntry {
        change: Change {
            path: path.to_string_lossy().into_owned(),
            kind,
            size,
            is_dir: is_dir_now,
        },
        rel,
        entry,
        stat: EntryStat::from(st),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn set_xattr(path: &Path, name: &CStr, value: &[u8]) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer of value.len() bytes.
        unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) == 0
        }
    }

    fn mknod_whiteout(path: &Path) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) == 0 }
    }

    fn listing(entries: &[ChangedEntry]) -> Vec<(String, ChangeKind, u64, bool)> {
        entries
            .iter()
            .map(|e| {
                (
                    e.change.path.clone(),
                    e.change.kind,
                    e.change.size,
                    e.change.is_dir,
                )
            })
            .collect()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        upper: PathBuf,
        lower: PathBuf,
        base: PathBuf,
    }

    impl Fixture {
        /// Two lowers (`lower` over `base`) and an empty upper.
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let (upper, lower, base) = (
                tmp.path().join("upper"),
                tmp.path().join("lower"),
                tmp.path().join("base"),
            );
            for d in [&upper, &lower, &base] {
                std::fs::create_dir(d).unwrap();
            }
            for d in ["etc", "srv/data", "var/log", "opt/tool"] {
                std::fs::create_dir_all(base.join(d)).unwrap();
            }
            std::fs::write(base.join("etc/hosts"), "base").unwrap();
            std::fs::write(base.join("var/log/old.log"), "old").unwrap();
            std::fs::write(base.join("opt/tool/bin"), "tool").unwrap();
            std::fs::create_dir_all(lower.join("etc")).unwrap();
            std::fs::write(lower.join("etc/motd"), "hi").unwrap();
            Self {
                _tmp: tmp,
                upper,
                lower,
                base,
            }
        }

        fn layers(&self) -> OverlayLayers {
            OverlayLayers {
                upper: self.upper.clone(),
                lowers: vec![self.lower.clone(), self.base.clone()],
            }
        }

        /// A directory copied up with the lower's mode, as overlayfs does.
        fn copy_up_dir(&self, rel: &str) {
            let path = self.upper.join(rel);
            std::fs::create_dir_all(&path).unwrap();
            let mode = std::fs::metadata(self.base.join(rel))
                .unwrap()
                .permissions()
                .mode();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    #[test]
    fn an_empty_upper_has_no_changes() {
        let fx = Fixture::new();
        assert!(scan(&fx.layers()).unwrap().is_empty());
    }

    #[test]
    fn added_modified_and_copied_up_parents() {
        let fx = Fixture::new();
        fx.copy_up_dir("etc");
        std::fs::write(fx.upper.join("etc/hosts"), "changed!").unwrap();
        std::fs::write(fx.upper.join("etc/motd"), "new motd").unwrap();
        std::fs::write(fx.upper.join("etc/new.conf"), "x").unwrap();
        std::fs::create_dir_all(fx.upper.join("workspace/src")).unwrap();
        std::fs::write(fx.upper.join("workspace/src/main.rs"), "fn main() {}").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", fx.upper.join("workspace/link")).unwrap();
        let got = listing(&scan(&fx.layers()).unwrap());
        assert_eq!(
            got,
            vec![
                ("/etc/hosts".into(), ChangeKind::Modified, 8, false),
                ("/etc/motd".into(), ChangeKind::Modified, 8, false),
                ("/etc/new.conf".into(), ChangeKind::Added, 1, false),
                ("/workspace".into(), ChangeKind::Added, 0, true),
                ("/workspace/link".into(), ChangeKind::Added, 0, false),
                ("/workspace/src".into(), ChangeKind::Added, 0, true),
                (
                    "/workspace/src/main.rs".into(),
                    ChangeKind::Added,
                    12,
                    false
                ),
            ]
        );
    }

    #[test]
    fn a_copied_up_directory_with_a_new_mode_is_modified() {
        let fx = Fixture::new();
        fx.copy_up_dir("srv");
        std::fs::set_permissions(fx.upper.join("srv"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let got = listing(&scan(&fx.layers()).unwrap());
        assert_eq!(got, vec![("/srv".into(), ChangeKind::Modified, 0, true)]);
    }

    #[test]
    fn xattr_whiteouts_and_opaque_directories() {
        let fx = Fixture::new();
        fx.copy_up_dir("var");
        // `rm -rf /var/log; mkdir /var/log; echo > /var/log/new.log`
        std::fs::create_dir(fx.upper.join("var/log")).unwrap();
        std::fs::write(fx.upper.join("var/log/new.log"), "n").unwrap();
        // `rm -rf /opt/tool`
        fx.copy_up_dir("opt");
        std::fs::write(fx.upper.join("opt/tool"), "").unwrap();
        let marked = set_xattr(&fx.upper.join("var/log"), c"trusted.overlay.opaque", b"y")
            && set_xattr(&fx.upper.join("opt/tool"), c"trusted.overlay.whiteout", b"")
            || set_xattr(&fx.upper.join("var/log"), c"user.overlay.opaque", b"y")
                && set_xattr(&fx.upper.join("opt/tool"), c"user.overlay.whiteout", b"");
        if !marked {
            eprintln!("skipped: the temp file system takes neither trusted.* nor user.* xattrs");
            return;
        }
        let entries = scan(&fx.layers()).unwrap();
        assert_eq!(
            listing(&entries),
            vec![
                ("/opt/tool".into(), ChangeKind::Deleted, 0, true),
                ("/var/log".into(), ChangeKind::Modified, 0, true),
                // old.log exists in the lower but is hidden by the opaque dir.
                ("/var/log/new.log".into(), ChangeKind::Added, 1, false),
            ]
        );
        assert_eq!(entries[0].entry, EntryType::Whiteout);
        assert_eq!(entries[1].entry, EntryType::Dir { opaque: true });
    }

    #[test]
    fn device_whiteouts_hide_lower_entries() {
        if !is_root() {
            eprintln!("skipped: mknod of a whiteout device needs root");
            return;
        }
        let fx = Fixture::new();
        fx.copy_up_dir("etc");
        assert!(mknod_whiteout(&fx.upper.join("etc/hosts")));
        assert!(mknod_whiteout(&fx.upper.join("etc/motd")));
        // A whiteout for something no lower has is no change.
        assert!(mknod_whiteout(&fx.upper.join("etc/never")));
        let got = listing(&scan(&fx.layers()).unwrap());
        assert_eq!(
            got,
            vec![
                ("/etc/hosts".into(), ChangeKind::Deleted, 0, false),
                ("/etc/motd".into(), ChangeKind::Deleted, 0, false),
            ]
        );
    }

    #[test]
    fn a_whiteout_in_an_upper_lower_hides_the_base() {
        if !is_root() {
            eprintln!("skipped: mknod of a whiteout device needs root");
            return;
        }
        let fx = Fixture::new();
        std::fs::create_dir_all(fx.lower.join("opt")).unwrap();
        assert!(mknod_whiteout(&fx.lower.join("opt/tool")));
        std::fs::create_dir_all(fx.upper.join("opt/tool")).unwrap();
        let got = listing(&scan(&fx.layers()).unwrap());
        // The merged lower has no /opt/tool, so the upper one is new.
        assert_eq!(got, vec![("/opt/tool".into(), ChangeKind::Added, 0, true)]);
    }

    #[test]
    fn a_file_replacing_a_lower_directory_hides_its_children() {
        let fx = Fixture::new();
        std::fs::write(fx.upper.join("srv"), "now a file").unwrap();
        std::fs::create_dir_all(fx.upper.join("opt")).unwrap();
        std::os::unix::fs::symlink("/", fx.upper.join("opt/tool")).unwrap();
        let got = listing(&scan(&fx.layers()).unwrap());
        assert_eq!(
            got,
            vec![
                ("/opt/tool".into(), ChangeKind::Modified, 0, false),
                ("/srv".into(), ChangeKind::Modified, 10, false),
            ]
        );
    }

    #[test]
    fn symlinks_in_lowers_are_not_followed() {
        let fx = Fixture::new();
        // A lower symlink `lib -> opt`: `/lib/tool` is not in the lowers.
        std::os::unix::fs::symlink("opt", fx.base.join("lib")).unwrap();
        std::fs::create_dir_all(fx.upper.join("lib/tool")).unwrap();
        let got = listing(&scan(&fx.layers()).unwrap());
        assert_eq!(
            got,
            vec![
                ("/lib".into(), ChangeKind::Modified, 0, true),
                ("/lib/tool".into(), ChangeKind::Added, 0, true),
            ]
        );
    }
}
