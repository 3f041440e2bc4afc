//! Unpacking layer tarballs into layer directories: entry by entry, never
//! following symlinks, with OCI whiteouts turned into overlay whiteouts and
//! owners shifted into the sandboxes' id range.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::blobs::{io_error, temp_path};
use super::reference::parse_digest;
use super::ImageError;

/// The OCI whiteout prefix.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The most bytes of file content one unpacked layer may write (and, with
/// some room for tar headers, the most uncompressed tar it may read):
/// compression bombs fail instead of filling the disk.
pub(crate) const MAX_LAYER_BYTES: u64 = 64 << 30;

/// Extension of the marker file next to a layer dir holding its full
/// diff_id (the dir name is only a prefix of it).
pub(crate) const DIFF_ID_MARKER_EXT: &str = "diffid";

/// How image uids/gids become host ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdShift {
    /// Host id of the image's id 0.
    pub base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdShift {
    /// Image id `id` → host id; unmapped ids become the sandbox's nobody.
    pub(crate) fn map(self, id: u64) -> u32 {
        match u32::try_from(id) {
            Ok(id) if id < self.count => self.base.saturating_add(id),
            _ => self.base.saturating_add(65534),
        }
    }
}

/// `root/l/<first 16 hex of diff_id>`: short, because overlay's mount
/// options (all lowerdirs) must fit in one page.
pub(crate) fn layer_dir(root: &Path, diff_id: &str) -> Result<PathBuf, ImageError> {
    let hex = parse_digest(diff_id)?;
    Ok(root.join("l").join(&hex[..16]))
}

/// `root/l/<first 16 hex of diff_id>.diffid`: the full diff_id of the
/// layer dir of the same name.
pub(crate) fn layer_marker(dir: &Path) -> PathBuf {
    dir.with_extension(DIFF_ID_MARKER_EXT)
}

/// Whether the layer dir `dir` is the published, complete unpack of
/// `diff_id`: `Ok(true)` when its marker names `diff_id`, `Ok(false)` when
/// the dir or its marker is missing (an incomplete unpack), and an error
/// when the marker names another diff_id (a prefix collision: never
/// reused).
pub(crate) fn check_layer_dir(dir: &Path, diff_id: &str) -> Result<bool, ImageError> {
    let marker = layer_marker(dir);
    let recorded = match std::fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(format!("read {}", marker.display()))(e)),
    };
    if recorded.trim() != diff_id {
        return Err(ImageError::DigestMismatch(format!(
            "layer dir {} belongs to diff_id {} (not {diff_id}): \
             refusing to reuse it for a different layer",
            dir.display(),
            recorded.trim()
        )));
    }
    Ok(is_real_dir(dir))
}

/// Records `diff_id` in the marker of `dest` (atomically: a temp file
/// hard-linked into place), or checks the marker already there.
fn write_marker(root: &Path, dest: &Path, diff_id: &str) -> Result<(), ImageError> {
    let marker = layer_marker(dest);
    let temp = temp_path(root, "diffid");
    std::fs::write(&temp, diff_id).map_err(io_error(format!("write {}", temp.display())))?;
    let linked = std::fs::hard_link(&temp, &marker);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_layer_dir(dest, diff_id).map(|_| ())
        }
        Err(e) => Err(io_error(format!("write {}", marker.display()))(e)),
    }
}

/// Unpacks the layer blob at `blob` into its layer dir unless it is there
/// already, verifying the uncompressed content against `diff_id`. The dir
/// appears (by rename) only when complete, after its diff_id marker; when
/// two unpacks race, the first one wins.
pub(crate) fn ensure_layer(
    root: &Path,
    blob: &Path,
    diff_id: &str,
    ids: IdShift,
) -> Result<PathBuf, ImageError> {
    ensure_layer_limited(root, blob, diff_id, ids, MAX_LAYER_BYTES)
}

/// [`ensure_layer`] with at most `limit` bytes of file content.
pub(crate) fn ensure_layer_limited(
    root: &Path,
    blob: &Path,
    diff_id: &str,
    ids: IdShift,
    limit: u64,
) -> Result<PathBuf, ImageError> {
    let dest = layer_dir(root, diff_id)?;
    if check_layer_dir(&dest, diff_id)? {
        return Ok(dest);
    }
    if std::fs::symlink_metadata(&dest).is_ok() {
        // Another unpack may have published it since the check above.
        if check_layer_dir(&dest, diff_id)? {
            return Ok(dest);
        }
        // Published dirs always have their marker first: this one was
        // left by something else and is not trusted.
        return Err(ImageError::InvalidArchive(format!(
            "layer dir {} exists without a diff_id marker; \
             remove the images using it and run a sweep",
            dest.display()
        )));
    }
    let parent = root.join("l");
    std::fs::create_dir_all(&parent).map_err(io_error("create layers dir"))?;
    std::fs::create_dir_all(super::blobs::tmp_dir(root)).map_err(io_error("create tmp dir"))?;
    let temp = temp_path(root, "layer");
    std::fs::create_dir(&temp).map_err(io_error(format!("create {}", temp.display())))?;
    let result = File::open(blob)
        .map_err(io_error(format!("open layer blob {}", blob.display())))
        .and_then(|file| unpack_verified_limited(file, &temp, diff_id, ids, limit))
        .and_then(|()| write_marker(root, &dest, diff_id));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&temp, &dest) {
        let _ = std::fs::remove_dir_all(&temp);
        if !dest.is_dir() {
            return Err(io_error(format!("move layer into {}", dest.display()))(e));
        }
    }
    Ok(dest)
}

/// Decompresses (gzip, zstd or none, by magic bytes) and unpacks `file`
/// into `dir`, checking the tar's sha256 against `diff_id`. Writes at most
/// `limit` bytes of file content and reads at most a little more than that
/// of uncompressed tar.
pub(crate) fn unpack_verified_limited(
    mut file: File,
    dir: &Path,
    diff_id: &str,
    ids: IdShift,
    limit: u64,
) -> Result<(), ImageError> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = file
            .read(&mut magic[got..])
            .map_err(io_error("read layer"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("rewind layer"))?;
    let reader: Box<dyn Read> = match &magic[..got] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_error("start zstd"))?)
        }
        _ => Box::new(BufReader::new(file)),
    };
    // Tar headers and padding take room too: allow 1/8 more, plus 1 MiB.
    let read_limit = limit.saturating_add(limit / 8).saturating_add(1 << 20);
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        read: 0,
        limit: read_limit,
    };
    let too_big = || {
        bad(format!(
            "layer {diff_id} unpacks to more than {read_limit} bytes of tar (limit {limit} bytes)"
        ))
    };
    let result = unpack_tar_limited(&mut hashing, dir, ids, limit)
        // The tar's end padding counts for the diff_id too.
        .and_then(|()| {
            io::copy(&mut hashing, &mut io::sink())
                .map(|_| ())
                .map_err(io_error("read layer"))
        });
    if hashing.read > hashing.limit {
        return Err(too_big());
    }
    result?;
    let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if actual != diff_id {
        return Err(ImageError::DigestMismatch(format!(
            "layer diff_id {diff_id} (content is {actual})"
        )));
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes read so far.
    read: u64,
    /// Reading more than this many bytes fails.
    limit: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read > self.limit {
            return Err(io::Error::other("layer too big"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other("layer too big"));
        }
        Ok(n)
    }
}

fn bad(msg: String) -> ImageError {
    ImageError::InvalidArchive(msg)
}

/// Unpacks the tar stream `reader` into `dir` (a directory private to the
/// daemon, so checking each parent with lstat is race free).
#[cfg(test)]
pub(crate) fn unpack_tar(reader: impl Read, dir: &Path, ids: IdShift) -> Result<(), ImageError> {
    unpack_tar_limited(reader, dir, ids, MAX_LAYER_BYTES)
}

/// Unpacks the tar stream `reader` into `dir` (see `unpack_tar`), writing
/// at most `limit` bytes of file content.
pub(crate) fn unpack_tar_limited(
    reader: impl Read,
    dir: &Path,
    ids: IdShift,
    limit: u64,
) -> Result<(), ImageError> {
    let mut written: u64 = 0;
    let mut archive = tar::Archive::new(reader);
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let entries = archive.entries().map_err(io_error("read layer tar"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_error("read layer tar entry"))?;
        let raw_path = entry
            .path()
            .map_err(io_error("read entry path"))?
            .into_owned();
        let rel = relative_path(&raw_path)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(io_error("read entry mode"))? & 0o7777;
        // Some tools leave the owner fields empty: read as root.
        let uid = ids.map(header.uid().unwrap_or(0));
        let gid = ids.map(header.gid().unwrap_or(0));
        let mtime = header.mtime().unwrap_or(0);
        let shown = raw_path.display().to_string();

        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            // The layer root itself ("./").
            if kind.is_dir() {
                apply_owner_mode(dir, uid, gid, Some(mode))?;
                dir_times.push((dir.to_path_buf(), mtime));
            }
            continue;
        };
        let parent = ensure_parent_dirs(dir, rel.parent().unwrap_or(Path::new("")), ids, &shown)?;
        let target = parent.join(&name);
        let name_str = name.to_string_lossy();

        if name_str == OPAQUE_MARKER {
            set_opaque(&parent)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(bad(format!("{shown}: bad whiteout name")));
            }
            let hidden_path = parent.join(hidden);
            remove_existing(&hidden_path, false)?;
            mknod(&hidden_path, libc::S_IFCHR, 0)?;
            std::os::unix::fs::lchown(&hidden_path, Some(ids.map(0)), Some(ids.map(0)))
                .map_err(io_error(format!("chown whiteout {shown}")))?;
            continue;
        }

        match kind {
            tar::EntryType::Directory => {
                remove_existing(&target, true)?;
                if !is_real_dir(&target) {
                    std::fs::create_dir(&target).map_err(io_error(format!("mkdir {shown}")))?;
                }
                apply_owner_mode(&target, uid, gid, Some(mode))?;
                dir_times.push((target, mtime));
            }
            tar::EntryType::GNUSparse => {
                // Written out, the holes would become real zeros: a tiny
                // entry could fill the disk.
                return Err(bad(format!("{shown}: sparse files are not supported")));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if written.saturating_add(size) > limit {
                    return Err(bad(format!(
                        "{shown}: the layer's files exceed the limit of {limit} bytes"
                    )));
                }
                remove_existing(&target, false)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_error(format!("create {shown}")))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(io_error(format!("write {shown}")))?;
                written = written.saturating_add(copied);
                drop(file);
                apply_owner_mode(&target, uid, gid, Some(mode))?;
                set_mtime(&target, mtime)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_error(format!("read link of {shown}")))?
                    .ok_or_else(|| bad(format!("{shown}: symlink without target")))?
                    .into_owned();
                remove_existing(&target, false)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_error(format!("symlink {shown}")))?;
                apply_owner_mode(&target, uid, gid, None)?;
                set_mtime(&target, mtime)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_error(format!("read link of {shown}")))?
                    .ok_or_else(|| bad(format!("{shown}: hard link without target")))?
                    .into_owned();
                let link_rel = relative_path(&link)?;
                let source = existing_in_layer(dir, &link_rel, &shown)?;
                if source == target {
                    continue;
                }
                remove_existing(&target, false)?;
                std::fs::hard_link(&source, &target)
                    .map_err(io_error(format!("hard link {shown}")))?;
            }
            tar::EntryType::Fifo => {
                remove_existing(&target, false)?;
                mknod(&target, libc::S_IFIFO, mode)?;
                apply_owner_mode(&target, uid, gid, Some(mode))?;
                set_mtime(&target, mtime)?;
            }
            // Device nodes cannot be used by sandboxes; other types
            // (PAX/GNU metadata) are handled by the tar reader.
            _ => {}
        }
    }
    // Directory mtimes last: creating children changed them.
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    Ok(())
}

/// The entry path as plain components; absolute paths and `..` are refused.
fn relative_path(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "entry {} escapes the layer (absolute or `..`)",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// Walks `rel` from `dir`, creating missing directories (owned by the
/// sandbox's root, mode 0755) and refusing any component that is a
/// symlink or not a directory.
fn ensure_parent_dirs(
    dir: &Path,
    rel: &Path,
    ids: IdShift,
    shown: &str,
) -> Result<PathBuf, ImageError> {
    let mut current = dir.to_path_buf();
    for component in rel.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "{shown}: parent {} is not a directory (symlinks are not followed)",
                    component.as_os_str().to_string_lossy()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&current)
                    .map_err(io_error(format!("mkdir parent of {shown}")))?;
                apply_owner_mode(&current, ids.map(0), ids.map(0), Some(0o755))?;
            }
            Err(e) => return Err(io_error(format!("stat parent of {shown}"))(e)),
        }
    }
    Ok(current)
}

/// The path of an existing non-directory entry for a hard link source.
fn existing_in_layer(dir: &Path, rel: &Path, shown: &str) -> Result<PathBuf, ImageError> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let mut current = dir.to_path_buf();
    for component in parent.components() {
        current.push(component);
        if !is_real_dir(&current) {
            return Err(bad(format!(
                "{shown}: hard link source {} not in layer",
                rel.display()
            )));
        }
    }
    let name = rel
        .file_name()
        .ok_or_else(|| bad(format!("{shown}: hard link to the layer root")))?;
    current.push(name);
    match std::fs::symlink_metadata(&current) {
        Ok(meta) if !meta.file_type().is_dir() => Ok(current),
        _ => Err(bad(format!(
            "{shown}: hard link source {} not in layer",
            rel.display()
        ))),
    }
}

/// Removes whatever is at `path` (keeping a directory when `keep_dir`).
fn remove_existing(path: &Path, keep_dir: bool) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                std::fs::remove_dir_all(path)
                    .map_err(io_error(format!("replace {}", path.display())))
            }
        }
        Ok(_) => {
            std::fs::remove_file(path).map_err(io_error(format!("replace {}", path.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("stat {}", path.display()))(e)),
    }
}

/// lchown, then chmod (chown clears setuid/setgid, so the mode comes after).
fn apply_owner_mode(path: &Path, uid: u32, gid: u32, mode: Option<u32>) -> Result<(), ImageError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_error(format!("chown {}", path.display())))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| bad(format!("path with NUL: {}", path.display())))
}

fn mknod(path: &Path, kind: libc::mode_t, mode: u32) -> Result<(), ImageError> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | (mode & 0o7777), libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(io_error(format!("mknod {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Marks `dir` opaque for both privileged and user-namespace (`userxattr`)
/// overlay mounts.
fn set_opaque(dir: &Path) -> Result<(), ImageError> {
    let c = c_path(dir)?;
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: both strings are NUL-terminated and valid for the call;
        // the value pointer covers 1 byte as passed.
        let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            return Err(io_error(format!(
                "set {} on {}",
                name.to_string_lossy(),
                dir.display()
            ))(io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> Result<(), ImageError> {
    let c = c_path(path)?;
    let secs = libc::time_t::try_from(mtime).unwrap_or(0);
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `c` is a valid path and `times` points to two timespecs, as
    // utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io_error(format!("set mtime of {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    const IDS: IdShift = IdShift {
        base: 100_000,
        count: 65_536,
    };

    /// A tar built entry by entry with raw names (the `tar` builder's
    /// path helpers would refuse the hostile ones).
    struct RawTar(tar::Builder<Vec<u8>>);

    impl RawTar {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn add(
            &mut self,
            path: &str,
            kind: tar::EntryType,
            data: &[u8],
            link: Option<&str>,
            mode: u32,
            owner: (u64, u64),
        ) -> &mut Self {
            let mut h = tar::Header::new_gnu();
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(owner.0);
            h.set_gid(owner.1);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.add(path, tar::EntryType::Regular, data, None, 0o644, (0, 0))
        }

        fn finish(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.into_inner().unwrap()
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipping: needs root (chown, mknod, trusted xattrs)");
        }
        root
    }

    fn xattr(path: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
        let c = c_path(path).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    #[test]
    fn owner_shift_maps_and_clamps() {
        assert_eq!(IDS.map(0), 100_000);
        assert_eq!(IDS.map(1000), 101_000);
        assert_eq!(IDS.map(65_535), 165_535);
        assert_eq!(IDS.map(65_536), 165_534);
        assert_eq!(IDS.map(u64::MAX), 165_534);
        let small = IdShift { base: 5, count: 10 };
        assert_eq!(small.map(9), 14);
        assert_eq!(small.map(10), 5 + 65_534);
    }

    #[test]
    fn files_dirs_links_owners_modes_and_whiteouts() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tar = RawTar::new()
            .add("./", tar::EntryType::Directory, b"", None, 0o755, (0, 0))
            .add("etc/", tar::EntryType::Directory, b"", None, 0o750, (0, 42))
            .add(
                "etc/hosts",
                tar::EntryType::Regular,
                b"127.0.0.1 x\n",
                None,
                0o644,
                (1000, 1000),
            )
            .add(
                "usr/bin/sudo",
                tar::EntryType::Regular,
                b"#!",
                None,
                0o4755,
                (0, 0),
            )
            .add(
                "usr/bin/alias",
                tar::EntryType::Link,
                b"",
                Some("usr/bin/sudo"),
                0o755,
                (0, 0),
            )
            .add(
                "bin",
                tar::EntryType::Symlink,
                b"",
                Some("usr/bin"),
                0o777,
                (70000, 0),
            )
            .add("run/pipe", tar::EntryType::Fifo, b"", None, 0o600, (0, 0))
            .add("dev/null", tar::EntryType::Char, b"", None, 0o666, (0, 0))
            .add(
                "var/.wh.cache",
                tar::EntryType::Regular,
                b"",
                None,
                0o644,
                (0, 0),
            )
            .add(
                "opt/.wh..wh..opq",
                tar::EntryType::Regular,
                b"",
                None,
                0o644,
                (0, 0),
            )
            .finish();
        unpack_tar(&tar[..], dir.path(), IDS).unwrap();
        let p = dir.path();

        let hosts = std::fs::symlink_metadata(p.join("etc/hosts")).unwrap();
        assert_eq!((hosts.uid(), hosts.gid()), (101_000, 101_000));
        assert_eq!(hosts.mode() & 0o7777, 0o644);
        assert_eq!(hosts.mtime(), 1_600_000_000);
        let etc = std::fs::symlink_metadata(p.join("etc")).unwrap();
        assert_eq!(
            (etc.uid(), etc.gid(), etc.mode() & 0o7777),
            (100_000, 100_042, 0o750)
        );
        assert_eq!(
            etc.mtime(),
            1_600_000_000,
            "dir mtime restored after children"
        );
        let sudo = std::fs::symlink_metadata(p.join("usr/bin/sudo")).unwrap();
        assert_eq!(sudo.mode() & 0o7777, 0o4755, "setuid kept after chown");
        let implicit = std::fs::symlink_metadata(p.join("usr")).unwrap();
        assert_eq!((implicit.uid(), implicit.mode() & 0o7777), (100_000, 0o755));
        let alias = std::fs::symlink_metadata(p.join("usr/bin/alias")).unwrap();
        assert_eq!(alias.ino(), sudo.ino(), "hard link within the layer");
        let bin = std::fs::symlink_metadata(p.join("bin")).unwrap();
        assert!(bin.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(p.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(bin.uid(), 165_534, "unmapped uid becomes nobody");
        assert!(std::fs::symlink_metadata(p.join("run/pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!p.join("dev/null").exists(), "device nodes are skipped");

        let wh = std::fs::symlink_metadata(p.join("var/cache")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!p.join("var/.wh.cache").exists());
        assert_eq!(
            xattr(&p.join("opt"), c"trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            xattr(&p.join("opt"), c"user.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert!(!p.join("opt/.wh..wh..opq").exists());
    }

    #[test]
    fn escapes_are_refused() {
        if !is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("passwd");
        std::fs::write(&victim, "original").unwrap();
        let cases: Vec<Vec<u8>> = vec![
            RawTar::new().file("../x", b"evil").finish(),
            RawTar::new().file("a/../../x", b"evil").finish(),
            RawTar::new().file("/abs", b"evil").finish(),
            RawTar::new()
                .add(
                    "a",
                    tar::EntryType::Symlink,
                    b"",
                    Some(outside.path().to_str().unwrap()),
                    0o777,
                    (0, 0),
                )
                .file("a/passwd", b"evil")
                .finish(),
            RawTar::new()
                .add(
                    "a",
                    tar::EntryType::Symlink,
                    b"",
                    Some("../.."),
                    0o777,
                    (0, 0),
                )
                .file("a/x", b"evil")
                .finish(),
            RawTar::new()
                .add(
                    "h",
                    tar::EntryType::Link,
                    b"",
                    Some("../passwd"),
                    0o644,
                    (0, 0),
                )
                .finish(),
            RawTar::new()
                .add(
                    "a",
                    tar::EntryType::Symlink,
                    b"",
                    Some(outside.path().to_str().unwrap()),
                    0o777,
                    (0, 0),
                )
                .add(
                    "h",
                    tar::EntryType::Link,
                    b"",
                    Some("a/passwd"),
                    0o644,
                    (0, 0),
                )
                .finish(),
            RawTar::new()
                .add(
                    "a",
                    tar::EntryType::Symlink,
                    b"",
                    Some(outside.path().to_str().unwrap()),
                    0o777,
                    (0, 0),
                )
                .file("a/.wh.passwd", b"")
                .finish(),
        ];
        for (i, tar) in cases.iter().enumerate() {
            let layer = tempfile::tempdir().unwrap();
            let sub = layer.path().join("root");
            std::fs::create_dir(&sub).unwrap();
            let err = unpack_tar(&tar[..], &sub, IDS).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidArchive(_)),
                "case {i}: {err}"
            );
            assert!(!layer.path().join("x").exists(), "case {i} wrote outside");
            assert_eq!(
                std::fs::read_to_string(&victim).unwrap(),
                "original",
                "case {i}"
            );
            assert_eq!(
                std::fs::read_dir(outside.path()).unwrap().count(),
                1,
                "case {i}"
            );
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones_without_following_symlinks() {
        if !is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("target");
        std::fs::write(&victim, "original").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tar = RawTar::new()
            .add(
                "f",
                tar::EntryType::Symlink,
                b"",
                Some(victim.to_str().unwrap()),
                0o777,
                (0, 0),
            )
            .file("f", b"replaced")
            .finish();
        unpack_tar(&tar[..], dir.path(), IDS).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        let f = std::fs::symlink_metadata(dir.path().join("f")).unwrap();
        assert!(f.is_file());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "replaced"
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn compressed_layers_are_verified_against_diff_id() {
        if !is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let tar = RawTar::new().file("hello", b"world").finish();
        let diff_id = super::super::blobs::digest_of(&tar);
        let blobs = [
            ("plain", tar.clone()),
            ("gzip", gzip(&tar)),
            ("zstd", zstd::encode_all(&tar[..], 1).unwrap()),
        ];
        for (kind, blob) in &blobs {
            let blob_file = root.path().join(format!("blob-{kind}"));
            std::fs::write(&blob_file, blob).unwrap();
            let dir = ensure_layer(root.path(), &blob_file, &diff_id, IDS).unwrap();
            assert_eq!(
                std::fs::read(dir.join("hello")).unwrap(),
                b"world",
                "{kind}"
            );
            assert_eq!(dir, layer_dir(root.path(), &diff_id).unwrap());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let wrong = super::super::blobs::digest_of(b"something else");
        let blob_file = root.path().join("blob-plain");
        let err = ensure_layer(root.path(), &blob_file, &wrong, IDS).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch(_)), "{err}");
        assert!(
            !layer_dir(root.path(), &wrong).unwrap().exists(),
            "nothing kept"
        );
        let leftovers = std::fs::read_dir(root.path().join("tmp")).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn sparse_entries_are_refused() {
        if !is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let data = b"abcd";
        let mut h = tar::Header::new_gnu();
        h.set_path("holes").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        {
            let gnu = h.as_gnu_mut().unwrap();
            // One 4-byte chunk at 1 GiB: written out, a 1 GiB file.
            gnu.sparse[0].set_offset(1 << 30);
            gnu.sparse[0].set_length(data.len() as u64);
            gnu.set_real_size((1 << 30) + data.len() as u64);
        }
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let dir = root.path().join("layer");
        std::fs::create_dir(&dir).unwrap();
        let err = unpack_tar(&tar[..], &dir, IDS).unwrap_err();
        assert!(
            matches!(&err, ImageError::InvalidArchive(m) if m.contains("sparse files are not supported")),
            "{err}"
        );
        assert!(!dir.join("holes").exists());
    }

    #[test]
    fn layers_over_the_size_cap_are_refused_and_removed() {
        if !is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        // 8 MiB of zeros compress to a few KiB: a small bomb.
        let big = vec![0u8; 8 << 20];
        let tar = RawTar::new().file("a", b"ok").file("zeros", &big).finish();
        let diff_id = super::super::blobs::digest_of(&tar);
        let blob_file = root.path().join("blob");
        std::fs::write(&blob_file, gzip(&tar)).unwrap();
        let err =
            ensure_layer_limited(root.path(), &blob_file, &diff_id, IDS, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, ImageError::InvalidArchive(m) if m.contains("limit")),
            "{err}"
        );
        let dest = layer_dir(root.path(), &diff_id).unwrap();
        assert!(!dest.exists());
        assert!(!layer_marker(&dest).exists());
        assert_eq!(
            std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
            0
        );
        // Under the cap it unpacks.
        let dir = ensure_layer_limited(root.path(), &blob_file, &diff_id, IDS, 16 << 20).unwrap();
        assert_eq!(std::fs::metadata(dir.join("zeros")).unwrap().len(), 8 << 20);
    }

    #[test]
    fn a_layer_dir_with_another_diff_id_is_never_reused() {
        if !is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let tar = RawTar::new().file("hello", b"world").finish();
        let diff_id = super::super::blobs::digest_of(&tar);
        let blob_file = root.path().join("blob");
        std::fs::write(&blob_file, &tar).unwrap();
        let dir = ensure_layer(root.path(), &blob_file, &diff_id, IDS).unwrap();
        let marker = layer_marker(&dir);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), diff_id);
        // Reused when the marker matches.
        assert_eq!(
            ensure_layer(root.path(), &blob_file, &diff_id, IDS).unwrap(),
            dir
        );
        // Another diff_id with the same 16-hex prefix (a collision).
        let hex = &diff_id["sha256:".len()..];
        let other_hex = format!(
            "{}{}",
            &hex[..16],
            if hex.ends_with('0') { "1" } else { "0" }.repeat(48)
        );
        let other = format!("sha256:{other_hex}");
        assert_eq!(layer_dir(root.path(), &other).unwrap(), dir);
        let err = ensure_layer(root.path(), &blob_file, &other, IDS).unwrap_err();
        assert!(
            matches!(&err, ImageError::DigestMismatch(m) if m.contains("refusing to reuse")),
            "{err}"
        );
        assert!(check_layer_dir(&dir, &other).is_err());
        // A dir without its marker is not trusted either.
        std::fs::remove_file(&marker).unwrap();
        assert!(!check_layer_dir(&dir, &diff_id).unwrap());
        let err = ensure_layer(root.path(), &blob_file, &diff_id, IDS).unwrap_err();
        assert!(matches!(err, ImageError::InvalidArchive(_)), "{err}");
    }
}
