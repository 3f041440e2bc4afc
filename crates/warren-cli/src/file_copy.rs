//! `warren cp`: copies files and directory trees between this host and a
//! sandbox, like `docker cp`. Everything streams: a local directory is
//! tarred on the fly into the upload, a downloaded tar is unpacked as it
//! arrives, and no side is ever held whole in memory or in a temporary file.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use warren_client::{ByteReader, Client, FileKind, TarCompression, UploadOptions};

use crate::args::CpArgs;
use crate::output::print_json;
use crate::transfer_progress::{human_bytes, ByteBar, ByteCounter, CountingReader};

/// Size of the chunks a local tar is cut into.
const CHUNK_BYTES: usize = 64 * 1024;
/// Size of the writes to local files and stdout.
const WRITE_BYTES: usize = 1024 * 1024;
/// Chunks buffered between the tar writer thread and the upload.
const CHUNKS_IN_FLIGHT: usize = 8;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// `-`: stdin as a source, stdout as a destination.
    Stdio,
    /// A path on this host.
    Local(PathBuf),
    /// `ID:/path` in a sandbox.
    Sandbox { id: String, path: String },
}

/// `ID:/abs/path` is a sandbox path, `-` is stdio, anything else is local
/// (write `./a:b` for a local name with a colon).
fn parse_endpoint(text: &str) -> anyhow::Result<Endpoint> {
    if text == "-" {
        return Ok(Endpoint::Stdio);
    }
    if let Some((id, path)) = text.split_once(':') {
        if !id.is_empty() && !id.contains('/') {
            if !path.starts_with('/') {
                bail!(
                    "sandbox paths must be absolute: write {id}:/{path} (for a local file \
                     with a colon in its name, write ./{text})"
                );
            }
            return Ok(Endpoint::Sandbox {
                id: id.to_owned(),
                path: path.to_owned(),
            });
        }
    }
    Ok(Endpoint::Local(PathBuf::from(text)))
}

/// Last component of a sandbox path (`""` for `/`).
fn remote_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Parent of a sandbox path (`/` for top-level entries).
fn remote_parent(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => trimmed[..i].to_owned(),
    }
}

fn remote_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn local_name(path: &Path) -> anyhow::Result<String> {
    let canonical;
    let named = match path.file_name() {
        Some(_) => path,
        None => {
            // `.` or `dir/..`: name it after what it really is.
            canonical = fs::canonicalize(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            &canonical
        }
    };
    named
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no name to copy under", path.display()))
}

/// Trees travel zstd-compressed to and from a daemon over the network;
/// over the local socket compression would only cost CPU.
fn wire_compression(client: &Client) -> TarCompression {
    if client.unix_socket_path().is_some() {
        TarCompression::None
    } else {
        TarCompression::Zstd
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Copied {
    bytes: u64,
    files: u64,
}

/// Runs `warren cp`.
pub async fn cp(client: &Client, args: &CpArgs, json: bool) -> anyhow::Result<ExitCode> {
    let src = parse_endpoint(&args.src)?;
    let dst = parse_endpoint(&args.dst)?;
    let to_stdout = dst == Endpoint::Stdio;
    let progress = Progress::new(!args.quiet && std::io::stderr().is_terminal());
    let started = Instant::now();
    let copied = match (&src, &dst) {
        (Endpoint::Sandbox { id, path }, Endpoint::Local(local)) => {
            download(client, id, path, Some(local), &progress).await?
        }
        (Endpoint::Sandbox { id, path }, Endpoint::Stdio) => {
            download(client, id, path, None, &progress).await?
        }
        (Endpoint::Local(local), Endpoint::Sandbox { id, path }) => {
            upload(client, Some(local), id, path, &progress).await?
        }
        (Endpoint::Stdio, Endpoint::Sandbox { id, path }) => {
            upload(client, None, id, path, &progress).await?
        }
        (
            Endpoint::Sandbox { id, path },
            Endpoint::Sandbox {
                id: to_id,
                path: to_path,
            },
        ) => between_sandboxes(client, (id, path), (to_id, to_path), &progress).await?,
        _ => bail!("one side of warren cp must be a sandbox path, written ID:/path"),
    };
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    if json && !to_stdout {
        print_json(&serde_json::json!({
            "bytes": copied.bytes,
            "files": copied.files,
            "seconds": (seconds * 1000.0).round() / 1000.0,
        }))?;
    } else if !args.quiet && std::io::stderr().is_terminal() {
        let rate = copied.bytes as f64 / seconds.max(0.001);
        eprintln!(
            "copied {} ({} file{}) in {seconds:.1}s ({}/s)",
            human_bytes(copied.bytes),
            copied.files,
            if copied.files == 1 { "" } else { "s" },
            human_bytes(rate as u64)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sandbox → host (`local` is `None` for stdout).
async fn download(
    client: &Client,
    id: &str,
    path: &str,
    local: Option<&Path>,
    progress: &Progress,
) -> anyhow::Result<Copied> {
    let stat = client
        .stat_file(id, path)
        .await
        .with_context(|| format!("cannot copy {path} from sandbox {id}"))?;
    if stat.kind != FileKind::Dir {
        let download = client
            .download_file(id, path, None)
            .await
            .with_context(|| format!("cannot read {path} in sandbox {id}"))?;
        progress.start(download.content_length);
        let mode = download.mode;
        let mut reader = progress.counted(download);
        let bytes = match local {
            None => copy_out(&mut reader, tokio::io::stdout())
                .await
                .with_context(|| format!("copying {path} from sandbox {id} broke off"))?,
            Some(local) => {
                let target = if local.is_dir() {
                    local.join(remote_name(path))
                } else {
                    local.to_path_buf()
                };
                write_local_file(&mut reader, &target, mode)
                    .await
                    .with_context(|| format!("copying {path} from sandbox {id} failed"))?
            }
        };
        return Ok(Copied { bytes, files: 1 });
    }

    if remote_name(path).is_empty() {
        bail!("cannot copy the whole root of sandbox {id}; name a directory in it");
    }
    let compression = wire_compression(client);
    let tar = client
        .download_tar(id, path, compression)
        .await
        .with_context(|| format!("cannot archive {path} in sandbox {id}"))?;
    let tar: ByteReader = match compression {
        TarCompression::Zstd => Box::pin(ZstdDecoder::new(BufReader::new(tar))),
        TarCompression::None => tar,
    };
    let tar: ByteReader = Box::pin(Incomplete {
        inner: tar,
        what: format!("{path} from sandbox {id}"),
    });
    progress.start(None);
    let reader = progress.counted(tar);
    let Some(local) = local else {
        // A directory to stdout is a tar stream, like `docker cp ID:/dir -`.
        let mut reader = reader;
        let bytes = copy_out(&mut reader, tokio::io::stdout())
            .await
            .with_context(|| format!("copying {path} from sandbox {id} broke off"))?;
        return Ok(Copied { bytes, files: 0 });
    };
    let target = if local.is_dir() {
        local.join(remote_name(path))
    } else {
        local.to_path_buf()
    };
    let bridge = SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || unpack_stripped(bridge, &target))
        .await
        .context("the unpacking thread failed")?
        .with_context(|| format!("copying {path} from sandbox {id} failed"))
}

/// An archive download whose read failed (the daemon broke the response
/// off because the sandbox could not archive everything, or the connection
/// dropped) is an incomplete archive: say so, whatever the transport says.
struct Incomplete {
    inner: ByteReader,
    what: String,
}

impl AsyncRead for Incomplete {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.inner.as_mut().poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(io::Error::new(
                e.kind(),
                format!("the archive of {} is incomplete ({e})", self.what),
            ))),
            other => other,
        }
    }
}

/// Copies `reader` to `out` in large writes: tokio's files and stdout hand
/// every write to a blocking thread, so small writes would cost a thread
/// hop each.
pub(crate) async fn copy_out(
    reader: &mut (impl AsyncRead + Unpin),
    out: impl AsyncWrite + Unpin,
) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(WRITE_BYTES, out);
    let n = tokio::io::copy(reader, &mut out).await?;
    out.flush().await?;
    Ok(n)
}

/// Writes a download next to `target` and renames it into place, so a
/// broken copy never leaves a half-written file under the final name.
async fn write_local_file(
    reader: &mut (impl AsyncRead + Unpin),
    target: &Path,
    mode: Option<u32>,
) -> anyhow::Result<u64> {
    let name = local_name(target)?;
    let temp = target.with_file_name(format!(".{name}.warren-{}", std::process::id()));
    let result = async {
        // create_new (O_CREAT|O_EXCL): a symlink planted at the temporary
        // name is never followed.
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let n = copy_out(reader, file).await?;
        if let Some(mode) = mode {
            tokio::fs::set_permissions(&temp, fs::Permissions::from_mode(mode)).await?;
        }
        tokio::fs::rename(&temp, target)
            .await
            .with_context(|| format!("cannot move the copy to {}", target.display()))?;
        anyhow::Ok(n)
    }
    .await;
    if result.is_err() {
        // Only our own file: a name that was already taken stays as it is.
        let ours = !matches!(&result, Err(e) if e.chain().any(|c| {
            c.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
        }));
        if ours {
            let _ = tokio::fs::remove_file(&temp).await;
        }
    }
    result
}

/// Host → sandbox (`local` is `None` for stdin).
async fn upload(
    client: &Client,
    local: Option<&Path>,
    id: &str,
    path: &str,
    progress: &Progress,
) -> anyhow::Result<Copied> {
    let Some(local) = local else {
        progress.start(None);
        let options = UploadOptions::default();
        let stat = client
            .upload_file(id, path, progress.counted(tokio::io::stdin()), &options)
            .await
            .with_context(|| format!("cannot write {path} in sandbox {id}"))?;
        return Ok(Copied {
            bytes: stat.size,
            files: 1,
        });
    };
    let meta = fs::metadata(local).with_context(|| format!("cannot copy {}", local.display()))?;
    let name = local_name(local)?;
    let existing = client
        .file_exists(id, path)
        .await
        .with_context(|| format!("cannot copy into {path} in sandbox {id}"))?;
    let into_dir = existing.kind == Some(FileKind::Dir) || path.ends_with('/');

    if !meta.is_dir() {
        let target = if into_dir {
            remote_join(path, &name)
        } else {
            path.to_owned()
        };
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot open {}", local.display()))?;
        progress.start(Some(meta.len()));
        let options = UploadOptions {
            mode: Some(meta.permissions().mode() & 0o7777),
            user: None,
            size: Some(meta.len()),
        };
        let stat = client
            .upload_file(id, &target, progress.counted(file), &options)
            .await
            .with_context(|| format!("cannot write {target} in sandbox {id}"))?;
        return Ok(Copied {
            bytes: stat.size,
            files: 1,
        });
    }

    // A directory: into an existing directory under its own name, else it
    // becomes `path`.
    let (dir, prefix) = if into_dir {
        (path.trim_end_matches('/').to_owned(), name)
    } else {
        let prefix = remote_name(path).to_owned();
        if prefix.is_empty() {
            bail!("cannot copy a directory over the root of sandbox {id}");
        }
        (remote_parent(path), prefix)
    };
    let root = local.to_path_buf();
    let size_root = root.clone();
    let total = tokio::task::spawn_blocking(move || tree_size(&size_root))
        .await
        .context("the scanning thread failed")?
        .with_context(|| format!("cannot read {}", local.display()))?;
    progress.start(Some(total.bytes));
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone());
        let result = write_tar(&root, Path::new(&prefix), &mut out);
        if let Err(e) = &result {
            // Fail the upload rather than let it end as a short archive.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let chunks = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let reader = progress.counted(StreamReader::new(chunks));
    let compression = wire_compression(client);
    let reader: ByteReader = match compression {
        TarCompression::Zstd => Box::pin(ZstdEncoder::new(BufReader::new(reader))),
        TarCompression::None => Box::pin(reader),
    };
    let uploaded = client.upload_tar(id, &dir, reader, compression).await;
    let written = writer.await.context("the archiving thread failed")?;
    // A local read error explains a failed upload better than the upload's
    // own error does; a refused upload explains why the archive stopped.
    match (uploaded, written) {
        (_, Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).with_context(|| format!("cannot archive {}", local.display()))
        }
        (Err(e), _) => Err(e).with_context(|| format!("cannot unpack into {dir} in sandbox {id}")),
        (Ok(_), Err(e)) => Err(e).with_context(|| format!("cannot archive {}", local.display())),
        (Ok(uploaded), Ok(stats)) => Ok(Copied {
            bytes: uploaded.bytes,
            files: stats.files,
        }),
    }
}

/// Sandbox → sandbox: one file, streamed through this host.
async fn between_sandboxes(
    client: &Client,
    (id, path): (&str, &str),
    (to_id, to_path): (&str, &str),
    progress: &Progress,
) -> anyhow::Result<Copied> {
    let download = client
        .download_file(id, path, None)
        .await
        .with_context(|| format!("cannot read {path} in sandbox {id}"))?;
    progress.start(download.content_length);
    let options = UploadOptions {
        mode: download.mode,
        user: None,
        size: download.content_length,
    };
    let stat = client
        .upload_file(to_id, to_path, progress.counted(download), &options)
        .await
        .with_context(|| format!("cannot write {to_path} in sandbox {to_id}"))?;
    Ok(Copied {
        bytes: stat.size,
        files: 1,
    })
}

/// Files and bytes of a local tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TreeStats {
    files: u64,
    bytes: u64,
}

fn tree_size(path: &Path) -> io::Result<TreeStats> {
    let meta = fs::symlink_metadata(path)?;
    let mut stats = TreeStats::default();
    if meta.is_file() {
        stats.files = 1;
        stats.bytes = meta.len();
    } else if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let sub = tree_size(&entry?.path())?;
            stats.files += sub.files;
            stats.bytes += sub.bytes;
        }
    }
    Ok(stats)
}

/// Tars `root` with its entries named `prefix/…`; symlinks are stored as
/// links, never followed; sockets are skipped.
fn write_tar(root: &Path, prefix: &Path, out: &mut impl Write) -> io::Result<TreeStats> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut stats = TreeStats::default();
    append_entry(&mut builder, root, prefix, &mut stats)?;
    builder.into_inner()?.flush()?;
    Ok(stats)
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    stats: &mut TreeStats,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_socket() {
        return Ok(());
    }
    builder.append_path_with_name(path, name)?;
    if meta.is_file() {
        stats.files += 1;
        stats.bytes += meta.len();
    }
    if meta.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            append_entry(builder, &entry.path(), &name.join(entry.file_name()), stats)?;
        }
    }
    Ok(())
}

/// An entry name without its first component (the archived directory's
/// own name); refuses anything but plain names below it.
fn strip_first(name: &Path) -> anyhow::Result<PathBuf> {
    let mut parts = name.components().filter(|c| *c != Component::CurDir);
    match parts.next() {
        Some(Component::Normal(_)) => {}
        _ => bail!("refusing archive entry {:?}", name),
    }
    let mut rest = PathBuf::new();
    for part in parts {
        match part {
            Component::Normal(p) => rest.push(p),
            _ => bail!("refusing archive entry {:?}", name),
        }
    }
    Ok(rest)
}

/// Refuses to write through a symlink that an earlier entry created.
fn check_no_symlink_on_the_way(target: &Path, rel: &Path) -> anyhow::Result<()> {
    let mut at = target.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for part in parents.iter().take(parents.len().saturating_sub(1)) {
        at.push(part);
        if let Ok(meta) = fs::symlink_metadata(&at) {
            if meta.file_type().is_symlink() {
                bail!(
                    "refusing to write {} through the symlink {}",
                    target.join(rel).display(),
                    at.display()
                );
            }
        }
    }
    Ok(())
}

/// Unpacks a tar of one directory into `target` (the directory's new
/// name), dropping the first component of every entry.
fn unpack_stripped(reader: impl Read, target: &Path) -> anyhow::Result<Copied> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_mtime(true);
    match fs::create_dir(target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && target.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", target.display())),
    }
    let mut copied = Copied::default();
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry.path().context("reading an entry name")?.into_owned();
        let rel = strip_first(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        check_no_symlink_on_the_way(target, &rel)?;
        let dest = target.join(&rel);
        if entry.header().entry_type() == tar::EntryType::Link {
            let link = entry
                .link_name()
                .context("reading a hard link")?
                .with_context(|| format!("hard link {} has no target", name.display()))?
                .into_owned();
            let source_rel = strip_first(&link)?;
            // The source must not lead through a symlink an earlier entry
            // made either, or the link would reach a file outside.
            check_no_symlink_on_the_way(target, &source_rel)?;
            let source = target.join(source_rel);
            let _ = fs::remove_file(&dest);
            fs::hard_link(&source, &dest)
                .with_context(|| format!("cannot link {}", dest.display()))?;
            continue;
        }
        if entry.header().entry_type().is_file() {
            copied.files += 1;
            copied.bytes += entry.size();
        }
        entry
            .unpack(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
    }
    Ok(copied)
}

/// A `Write` that hands 64 KiB chunks to the async side.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload ended early"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Bytes moved so far, and a progress bar on stderr when wanted.
struct Progress {
    show: bool,
    counter: ByteCounter,
    bar: std::sync::Mutex<Option<ByteBar>>,
}

impl Progress {
    fn new(show: bool) -> Self {
        Self {
            show,
            counter: ByteCounter::default(),
            bar: std::sync::Mutex::new(None),
        }
    }

    /// Starts drawing (when wanted) against `total` bytes, if known.
    fn start(&self, total: Option<u64>) {
        let bar = ByteBar::start(
            "copying".into(),
            self.counter.clone(),
            total,
            "finishing",
            !self.show,
        );
        let old = self
            .bar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bar);
        if let Some(old) = old {
            old.finish();
        }
    }

    /// `reader`, counting what it yields.
    fn counted<R: AsyncRead + Unpin>(&self, reader: R) -> CountingReader<R> {
        self.counter.counted(reader)
    }

    /// Stops drawing and clears the line.
    fn finish(&self) {
        let bar = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(bar) = bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("-").unwrap(), Endpoint::Stdio);
        assert_eq!(
            parse_endpoint("abc:/w/x").unwrap(),
            Endpoint::Sandbox {
                id: "abc".into(),
                path: "/w/x".into()
            }
        );
        assert_eq!(
            parse_endpoint("./a:b").unwrap(),
            Endpoint::Local("./a:b".into())
        );
        assert_eq!(
            parse_endpoint("/tmp/x").unwrap(),
            Endpoint::Local("/tmp/x".into())
        );
        let err = parse_endpoint("abc:rel").unwrap_err().to_string();
        assert!(err.contains("abc:/rel"), "{err}");
    }

    #[test]
    fn remote_names_and_parents() {
        assert_eq!(remote_name("/w/dir/"), "dir");
        assert_eq!(remote_name("/"), "");
        assert_eq!(remote_parent("/w/dir"), "/w");
        assert_eq!(remote_parent("/dir"), "/");
        assert_eq!(remote_join("/w/", "a"), "/w/a");
    }

    #[test]
    fn archive_names_lose_their_first_component_and_cannot_climb() {
        assert_eq!(strip_first(Path::new("d/a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(strip_first(Path::new("./d/a")).unwrap(), Path::new("a"));
        assert_eq!(strip_first(Path::new("d")).unwrap(), Path::new(""));
        assert!(strip_first(Path::new("d/../../x")).is_err());
        assert!(strip_first(Path::new("/etc/passwd")).is_err());
        assert!(strip_first(Path::new("..")).is_err());
    }

    #[test]
    fn a_tree_round_trips_through_tar_and_symlinks_are_not_followed() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("d/sub")).unwrap();
        fs::write(src.path().join("d/a.txt"), b"alpha").unwrap();
        fs::write(src.path().join("d/sub/b.bin"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("d/link")).unwrap();
        let mut tar = Vec::new();
        let stats = write_tar(&src.path().join("d"), Path::new("d"), &mut tar).unwrap();
        assert_eq!(
            stats,
            TreeStats {
                files: 2,
                bytes: 100_005
            }
        );

        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("copy");
        let copied = unpack_stripped(&tar[..], &target).unwrap();
        assert_eq!(
            copied,
            Copied {
                files: 2,
                bytes: 100_005
            }
        );
        assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(fs::read(target.join("sub/b.bin")).unwrap().len(), 100_000);
        assert_eq!(
            fs::read_link(target.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn unpacking_refuses_to_write_through_an_archived_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, "d/l", outside.path())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "d/l/pwned", &b"owned"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        assert!(unpack_stripped(&tar[..], &dst.path().join("copy")).is_err());
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn unpacking_refuses_a_hard_link_whose_source_goes_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, "d/l", outside.path())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Link);
        header.set_size(0);
        header.set_mode(0o644);
        builder
            .append_link(&mut header, "d/grab", "d/l/secret")
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = unpack_stripped(&tar[..], &dst.path().join("copy")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err:#}");
        assert!(!dst.path().join("copy/grab").exists());
    }

    #[tokio::test]
    async fn a_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = dir.path().join("out.txt");
        let temp = dir
            .path()
            .join(format!(".out.txt.warren-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        let mut data = &b"new content"[..];
        assert!(write_local_file(&mut data, &target, None).await.is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!target.exists());
        // The planted link is left alone (it is not ours to remove).
        assert!(fs::symlink_metadata(&temp)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
