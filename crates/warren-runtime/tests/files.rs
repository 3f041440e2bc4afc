#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privileged integration tests of the file API through the namespace
//! driver: a real sandbox, its real agent, real permissions and disks. They
//! skip (with a printed reason) when not run as root.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{require_root, Harness};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use warren_runtime::{
    ByteStream, Driver, DriverError, FileControl, FileKind, GrepSpec, SandboxSpec, WatchEvent,
    WatchKind, WriteSpec,
};

/// What the file tests ask of the harness besides the common helpers.
trait FileHarness {
    /// The common spec with 1 GiB of memory: large transfers go through
    /// the page cache of the sandbox's cgroup.
    fn sandbox_spec(&self, id: &str) -> SandboxSpec;
    /// Runs `script` as root, asserts it succeeds and returns its stdout.
    async fn root_sh(&self, id: &str, script: &str) -> String;
    /// The driver's file API.
    fn files(&self) -> &dyn FileControl;
}

impl FileHarness for Harness {
    fn sandbox_spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            memory_bytes: 1 << 30,
            ..self.spec(id)
        }
    }

    async fn root_sh(&self, id: &str, script: &str) -> String {
        let (code, out, err) = self.sh_as(id, Some("root"), script).await;
        assert_eq!(code, 0, "{script}: {err}");
        out
    }

    fn files(&self) -> &dyn FileControl {
        self.driver
            .files()
            .expect("the namespace driver has a file API")
    }
}

/// `len` deterministic pseudo-random bytes, generated as they are read.
struct Pattern {
    left: u64,
    state: u64,
}

impl Pattern {
    fn new(len: u64, seed: u64) -> Self {
        Self {
            left: len,
            state: seed | 1,
        }
    }
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let mut out = vec![0u8; n];
        for chunk in out.chunks_mut(8) {
            // xorshift64
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        buf.put_slice(&out);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// `len` bytes of one repeated block: a body that costs nothing to make,
/// so a timing measures the transfer.
struct Blocks {
    left: u64,
    block: Vec<u8>,
}

impl AsyncRead for Blocks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.left)
            .min(self.block.len() as u64) as usize;
        buf.put_slice(&self.block[..n]);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

fn bytes(data: &[u8]) -> ByteStream {
    Box::pin(std::io::Cursor::new(data.to_vec()))
}

fn spec(path: &str) -> WriteSpec {
    WriteSpec {
        path: path.into(),
        ..Default::default()
    }
}

/// Reads a stream to its end: (bytes, sha256).
async fn drain(mut s: ByteStream) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_all(files: &dyn FileControl, id: &str, path: &str) -> Vec<u8> {
    let (_, mut s) = files.read(id, path, 0, None).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_operations_and_their_conflicts() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("fmeta")).await;
    let f = h.files();
    let id = "fmeta";

    let st = f
        .write(id, spec("/workspace/a/b/c.txt"), bytes(b"hello"))
        .await
        .unwrap();
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 5, 0o644));
    assert_eq!(st.path, "/workspace/a/b/c.txt");
    let st = f.stat(id, "/workspace/a/b").await.unwrap();
    assert_eq!(st.kind, FileKind::Dir);
    h.root_sh(
        id,
        "ln -s c.txt /workspace/a/b/link && ln -s /nowhere /workspace/a/dangling",
    )
    .await;
    let link = f.stat(id, "/workspace/a/b/link").await.unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("c.txt"));
    assert_eq!(read_all(f, id, "/workspace/a/b/link").await, b"hello");

    // list: sorted, depth-limited, symlinks not followed.
    let one = f.list(id, "/workspace/a", 1).await.unwrap();
    let names: Vec<&str> = one.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(names, ["/workspace/a/b", "/workspace/a/dangling"]);
    let all = f.list(id, "/workspace/a", 5).await.unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "/workspace/a/b",
            "/workspace/a/b/c.txt",
            "/workspace/a/b/link",
            "/workspace/a/dangling"
        ]
    );
    assert!(matches!(
        f.list(id, "/workspace/a/b/c.txt", 1).await,
        Err(DriverError::Conflict(_))
    ));

    // Errors name the path.
    match f.stat(id, "/workspace/missing.txt").await {
        Err(DriverError::NotFound(m)) => {
            assert_eq!(m, "no such file or directory: /workspace/missing.txt")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.stat(id, "relative").await,
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        f.stat(id, "/a\0b").await,
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        f.read(id, "/workspace/a", 0, None).await.map(|r| r.0),
        Err(DriverError::Conflict(m)) if m.contains("is a directory")
    ));

    // mkdir -p, with a file in the way.
    let d = f.mkdir(id, "/workspace/m/n/o", Some(0o700)).await.unwrap();
    assert_eq!((d.kind, d.mode), (FileKind::Dir, 0o700));
    f.mkdir(id, "/workspace/m/n/o", None).await.unwrap();
    assert!(matches!(
        f.mkdir(id, "/workspace/a/b/c.txt/x", None).await,
        Err(DriverError::Conflict(_))
    ));

    // rename: refuses to replace unless asked; creates parents.
    f.write(id, spec("/workspace/r1"), bytes(b"one"))
        .await
        .unwrap();
    f.write(id, spec("/workspace/r2"), bytes(b"two"))
        .await
        .unwrap();
    assert!(matches!(
        f.rename(id, "/workspace/r1", "/workspace/r2", false).await,
        Err(DriverError::Conflict(_))
    ));
    let moved = f
        .rename(id, "/workspace/r1", "/workspace/r2", true)
        .await
        .unwrap();
    assert_eq!(moved.size, 3);
    assert_eq!(read_all(f, id, "/workspace/r2").await, b"one");
    f.rename(id, "/workspace/r2", "/workspace/new/dir/r3", false)
        .await
        .unwrap();
    assert!(matches!(
        f.rename(id, "/workspace/nope", "/workspace/x", false).await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        f.rename(id, "/workspace/m", "/workspace/a", true).await,
        Err(DriverError::Conflict(_))
    ));
    // Renaming a symlink renames the link, not its target.
    f.rename(id, "/workspace/a/b/link", "/workspace/a/b/link2", false)
        .await
        .unwrap();
    assert_eq!(f.stat(id, "/workspace/a/b/c.txt").await.unwrap().size, 5);

    // remove: files, symlinks (not their targets), dirs only when empty or recursive.
    f.remove(id, "/workspace/a/b/link2", false).await.unwrap();
    assert!(f.stat(id, "/workspace/a/b/c.txt").await.is_ok());
    assert!(matches!(
        f.remove(id, "/workspace/a", false).await,
        Err(DriverError::Conflict(m)) if m.contains("not empty")
    ));
    f.remove(id, "/workspace/a", true).await.unwrap();
    assert!(matches!(
        f.stat(id, "/workspace/a").await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        f.remove(id, "/", true).await,
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        f.remove(id, "/workspace/..", true).await,
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        f.remove(id, "/workspace/a", false).await,
        Err(DriverError::NotFound(_))
    ));
    assert!(f.stat(id, "/workspace").await.is_ok());

    // Timing of one small round trip (printed, not asserted).
    let rounds = 200;
    let mut each = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        f.stat(id, "/workspace/m").await.unwrap();
        each.push(started.elapsed());
    }
    each.sort();
    eprintln!(
        "TIMING stat round trip: median {:?}, p90 {:?}, mean {:?}",
        each[each.len() / 2],
        each[each.len() * 9 / 10],
        each.iter().sum::<Duration>() / rounds
    );
    let started = Instant::now();
    for _ in 0..rounds {
        f.list(id, "/workspace", 1).await.unwrap();
    }
    eprintln!(
        "TIMING list round trip: {:?} per call",
        started.elapsed() / rounds
    );
    let started = Instant::now();
    for i in 0..rounds {
        f.write(
            id,
            spec(&format!("/workspace/small{}", i % 10)),
            bytes(b"x"),
        )
        .await
        .unwrap();
    }
    eprintln!(
        "TIMING small write (replacing a file): {:?} per call",
        started.elapsed() / rounds
    );
    let started = Instant::now();
    for i in 0..rounds {
        let path = format!("/workspace/fresh/n{i}");
        f.write(id, spec(&path), bytes(b"x")).await.unwrap();
    }
    eprintln!(
        "TIMING small write (new file): {:?} per call",
        started.elapsed() / rounds
    );
    let started = Instant::now();
    for _ in 0..rounds {
        read_all(f, id, "/workspace/small1").await;
    }
    eprintln!(
        "TIMING small read: {:?} per call",
        started.elapsed() / rounds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_ranges_and_size_limits() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("fbig")).await;
    let f = h.files();
    let id = "fbig";

    // 64 MiB round trip with equal sha256.
    let size = 64u64 << 20;
    let mut expected = Vec::with_capacity(size as usize);
    Pattern::new(size, 7)
        .read_to_end(&mut expected)
        .await
        .unwrap();
    let want = hex(&Sha256::digest(&expected));
    let st = f
        .write(id, spec("/workspace/big.bin"), bytes(&expected))
        .await
        .unwrap();
    assert_eq!(st.size, size);
    let (stat, stream) = f.read(id, "/workspace/big.bin", 0, None).await.unwrap();
    assert_eq!(stat.size, size);
    assert_eq!(drain(stream).await.unwrap(), (size, want));
    // The agent's own view agrees.
    let sum = h
        .root_sh(id, "sha256sum /workspace/big.bin | cut -d' ' -f1")
        .await;
    assert_eq!(sum.trim(), hex(&Sha256::digest(&expected)));

    // Ranges.
    let (stat, mut s) = f
        .read(id, "/workspace/big.bin", 1000, Some(10))
        .await
        .unwrap();
    assert_eq!(stat.size, size);
    let mut part = Vec::new();
    s.read_to_end(&mut part).await.unwrap();
    assert_eq!(part, &expected[1000..1010]);
    let (_, mut s) = f
        .read(id, "/workspace/big.bin", size - 3, Some(100))
        .await
        .unwrap();
    let mut part = Vec::new();
    s.read_to_end(&mut part).await.unwrap();
    assert_eq!(part, &expected[(size - 3) as usize..]);
    let (_, mut s) = f
        .read(id, "/workspace/big.bin", size + 5, None)
        .await
        .unwrap();
    let mut part = Vec::new();
    s.read_to_end(&mut part).await.unwrap();
    assert!(part.is_empty());
    drop(expected);

    // Past max_bytes: TooLarge, no file, and no temp file left.
    let too_big = WriteSpec {
        max_bytes: Some(1 << 20),
        ..spec("/workspace/limited.bin")
    };
    let body: ByteStream = Box::pin(Pattern::new(2 << 20, 1));
    assert!(matches!(
        f.write(id, too_big.clone(), body).await,
        Err(DriverError::TooLarge(_))
    ));
    assert!(matches!(
        f.stat(id, "/workspace/limited.bin").await,
        Err(DriverError::NotFound(_))
    ));
    // Replacing keeps the old content.
    f.write(id, spec("/workspace/limited.bin"), bytes(b"old"))
        .await
        .unwrap();
    let body: ByteStream = Box::pin(Pattern::new(2 << 20, 1));
    assert!(matches!(
        f.write(id, too_big, body).await,
        Err(DriverError::TooLarge(_))
    ));
    assert_eq!(read_all(f, id, "/workspace/limited.bin").await, b"old");
    // A body that fails half-way aborts the upload: old content kept.
    struct Failing(u32);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return Poll::Ready(Err(std::io::Error::other("client went away")));
            }
            self.0 -= 1;
            buf.put_slice(&[b'x'; 1000]);
            Poll::Ready(Ok(()))
        }
    }
    assert!(f
        .write(id, spec("/workspace/limited.bin"), Box::pin(Failing(50)))
        .await
        .is_err());
    assert_eq!(read_all(f, id, "/workspace/limited.bin").await, b"old");
    // Mode of a replaced file is kept; an explicit one wins.
    h.root_sh(id, "chmod 0751 /workspace/limited.bin").await;
    let st = f
        .write(id, spec("/workspace/limited.bin"), bytes(b"new"))
        .await
        .unwrap();
    assert_eq!(st.mode, 0o751);
    let st = f
        .write(
            id,
            WriteSpec {
                mode: Some(0o600),
                ..spec("/workspace/limited.bin")
            },
            bytes(b"newer"),
        )
        .await
        .unwrap();
    assert_eq!(st.mode, 0o600);
    let listing = h.root_sh(id, "ls -a /workspace").await;
    assert!(!listing.contains("warren-tmp"), "{listing}");
    // Writing onto a directory is a conflict.
    assert!(matches!(
        f.write(id, spec("/workspace"), bytes(b"x")).await,
        Err(DriverError::Conflict(_))
    ));

    // A transfer in progress holds up nothing else: with a read open and
    // not consumed, commands and other file calls still run.
    let (_, pending) = f.read(id, "/workspace/big.bin", 0, None).await.unwrap();
    assert_eq!(h.root_sh(id, "echo still").await, "still\n");
    assert_eq!(f.stat(id, "/workspace/big.bin").await.unwrap().size, size);
    let (_, mut other) = f.read(id, "/workspace/limited.bin", 0, None).await.unwrap();
    let mut small = Vec::new();
    other.read_to_end(&mut small).await.unwrap();
    assert_eq!(small, b"newer");
    drop(pending);

    // Throughput of 256 MiB each way (printed, not asserted).
    let size = 256u64 << 20;
    let started = Instant::now();
    let body = Blocks {
        left: size,
        block: vec![0x5a; 1 << 20],
    };
    f.write(id, spec("/workspace/huge.bin"), Box::pin(body))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "TIMING write 256 MiB: {secs:.2} s = {:.0} MB/s",
        size as f64 / secs / 1e6
    );
    let started = Instant::now();
    let (_, mut stream) = f.read(id, "/workspace/huge.bin", 0, None).await.unwrap();
    let n = tokio::io::copy(&mut stream, &mut tokio::io::sink())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(n, size);
    eprintln!(
        "TIMING read 256 MiB: {secs:.2} s = {:.0} MB/s",
        size as f64 / secs / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_no_space_and_leaves_no_temp_file() {
    require_root!();
    let h = Harness::new();
    let mut s = h.sandbox_spec("fdisk");
    s.disk_mb = Some(16);
    h.create(&s).await;
    let f = h.files();
    f.write("fdisk", spec("/workspace/keep.txt"), bytes(b"keep"))
        .await
        .unwrap();
    let body: ByteStream = Box::pin(Pattern::new(32 << 20, 5));
    match f.write("fdisk", spec("/workspace/keep.txt"), body).await {
        Err(DriverError::NoSpace(m)) => assert!(m.contains("/workspace/keep.txt"), "{m}"),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(read_all(f, "fdisk", "/workspace/keep.txt").await, b"keep");
    let names: Vec<String> = f
        .list("fdisk", "/workspace", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(names, ["/workspace/keep.txt"]);
    // The space came back: a small write works again.
    f.write("fdisk", spec("/workspace/after.txt"), bytes(b"ok"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_user_gets_the_kernels_permission_checks() {
    require_root!();
    let h = Harness::new();
    let mut s = h.sandbox_spec("fuser");
    s.user = Some("agent".into());
    h.create(&s).await;
    let f = h.files();
    let id = "fuser";
    let uid: u32 = h.root_sh(id, "id -u agent").await.trim().parse().unwrap();
    assert_ne!(uid, 0);

    // The default user owns what it writes, parents included.
    let st = f
        .write(id, spec("/workspace/sub/mine.txt"), bytes(b"mine"))
        .await
        .unwrap();
    assert_eq!((st.uid, st.gid), (uid, uid));
    assert_eq!(f.stat(id, "/workspace/sub").await.unwrap().uid, uid);

    // A root-only file, written as root.
    let as_root = WriteSpec {
        mode: Some(0o600),
        user: Some("root".into()),
        ..spec("/workspace/secret.txt")
    };
    let st = f.write(id, as_root, bytes(b"secret")).await.unwrap();
    assert_eq!((st.uid, st.mode), (0, 0o600));
    assert!(matches!(
        f.read(id, "/workspace/secret.txt", 0, None).await.map(|r| r.0),
        Err(DriverError::PermissionDenied(m)) if m.contains("/workspace/secret.txt")
    ));
    assert!(matches!(
        f.write(id, spec("/etc/warren-test"), bytes(b"x")).await,
        Err(DriverError::PermissionDenied(_))
    ));
    assert!(matches!(
        f.mkdir(id, "/root/x", None).await,
        Err(DriverError::PermissionDenied(_))
    ));
    h.root_sh(
        id,
        "mkdir -m 0700 /workspace/closed && echo x > /workspace/closed/f",
    )
    .await;
    assert!(matches!(
        f.remove(id, "/workspace/closed/f", false).await,
        Err(DriverError::PermissionDenied(_))
    ));
    // A directory download that cannot read everything fails instead of
    // ending as a shorter but well-formed archive.
    h.root_sh(
        id,
        "mkdir -p /workspace/dl/sub && echo a > /workspace/dl/a && \
         echo s > /workspace/dl/m-secret && chmod 600 /workspace/dl/m-secret && \
         echo z > /workspace/dl/z && chmod 644 /workspace/dl/a /workspace/dl/z && \
         mkdir -m 0700 /workspace/dl2 && mkdir -m 0700 /workspace/dl2/closed && \
         chmod 755 /workspace/dl2",
    )
    .await;
    for dir in ["/workspace/dl", "/workspace/dl2"] {
        let tar = f.download_tar(id, dir).await.unwrap();
        let mut got = Vec::new();
        let err = Box::into_pin(Box::new(tar))
            .read_to_end(&mut got)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{dir}: {err}");
    }
    // Root (the explicit user) still can.
    let st = f
        .write(
            id,
            WriteSpec {
                user: Some("root".into()),
                ..spec("/workspace/closed/g")
            },
            bytes(b"g"),
        )
        .await
        .unwrap();
    assert_eq!(st.uid, 0);
    // Another file-system identity on another thread did not leak: the
    // agent still runs commands as usual.
    assert_eq!(h.root_sh(id, "id -u").await.trim(), "0");

    // A watch works as the user too (its inotify goes through the thread's
    // own /proc/self/fd).
    let mut rx = f.watch(id, "/workspace/sub", false).await.unwrap();
    f.write(id, spec("/workspace/sub/watched.txt"), bytes(b"w"))
        .await
        .unwrap();
    expect_event(&mut rx, |e| e.path == "/workspace/sub/watched.txt").await;
    drop(rx);

    // An unpacked archive belongs to the user too.
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_size(2);
    hd.set_mode(0o644);
    b.append_data(&mut hd, "d/f.txt", &b"hi"[..]).unwrap();
    let archive = b.into_inner().unwrap();
    f.upload_tar(id, "/workspace/unpacked", bytes(&archive), None)
        .await
        .unwrap();
    for p in [
        "/workspace/unpacked",
        "/workspace/unpacked/d",
        "/workspace/unpacked/d/f.txt",
    ] {
        assert_eq!(f.stat(id, p).await.unwrap().uid, uid, "{p}");
    }
    assert!(matches!(
        f.upload_tar(id, "/root/unpacked", bytes(&archive), None)
            .await,
        Err(DriverError::PermissionDenied(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_and_grep_with_caps() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("fsearch")).await;
    let f = h.files();
    let id = "fsearch";
    h.root_sh(
        id,
        "mkdir -p /workspace/p/src/deep && cd /workspace/p && \
         for i in 1 2 3 4 5; do echo \"fn f$i() {}\" > src/m$i.rs; done && \
         printf 'x\\nfn main() {\\n  TODO one\\n}\\ntodo two\\n' > src/deep/main.rs && \
         echo 'TODO in text' > notes.txt && printf 'TODO\\0binary' > blob.bin && \
         ln -s /etc src/etc-link && \
         head -c 5000 /dev/zero | tr '\\0' a > long.txt && echo ' TODO' >> long.txt",
    )
    .await;

    let found = f.find(id, "/workspace/p", "**/*.rs", 100).await.unwrap();
    let mut names: Vec<&str> = found.items.iter().map(|s| s.path.as_str()).collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.contains(&"/workspace/p/src/deep/main.rs"));
    assert!(!found.truncated);
    let capped = f.find(id, "/workspace/p", "**/*.rs", 2).await.unwrap();
    assert_eq!(capped.items.len(), 2);
    assert!(capped.truncated);
    let top = f.find(id, "/workspace/p", "*.txt", 100).await.unwrap();
    let names: Vec<&str> = top.items.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(names, ["/workspace/p/long.txt", "/workspace/p/notes.txt"]);
    // The symlink is found as itself and not descended into.
    let links = f
        .find(id, "/workspace/p", "**/etc-link/**", 100)
        .await
        .unwrap();
    assert!(links.items.is_empty());

    let grep = |pattern: &str, glob: Option<&str>, ignore_case: bool, max: u32| GrepSpec {
        root: "/workspace/p".into(),
        pattern: pattern.into(),
        glob: glob.map(String::from),
        ignore_case,
        max_matches: max,
    };
    let hits = f.grep(id, grep("TODO", None, false, 100)).await.unwrap();
    let mut seen: Vec<(String, u64)> = hits
        .items
        .iter()
        .map(|m| (m.path.clone(), m.line))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/workspace/p/long.txt".to_string(), 1),
            ("/workspace/p/notes.txt".to_string(), 1),
            ("/workspace/p/src/deep/main.rs".to_string(), 3),
        ],
        "binary files are skipped"
    );
    let long = hits
        .items
        .iter()
        .find(|m| m.path.ends_with("long.txt"))
        .unwrap();
    assert_eq!(long.text.len(), 1000);
    let hits = f
        .grep(id, grep("todo", Some("*.rs"), true, 100))
        .await
        .unwrap();
    let lines: Vec<(u64, &str)> = hits
        .items
        .iter()
        .map(|m| (m.line, m.text.as_str()))
        .collect();
    assert_eq!(lines, [(3, "  TODO one"), (5, "todo two")]);
    let capped = f.grep(id, grep("fn", None, false, 3)).await.unwrap();
    assert_eq!(capped.items.len(), 3);
    assert!(capped.truncated);
    assert!(matches!(
        f.grep(id, grep("(unclosed", None, false, 10)).await,
        Err(DriverError::Invalid(_))
    ));
    // One file as the root.
    let one = f
        .grep(
            id,
            GrepSpec {
                root: "/workspace/p/notes.txt".into(),
                ..grep("TODO", None, false, 10)
            },
        )
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_round_trip_and_hostile_archives() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("ftar")).await;
    let f = h.files();
    let id = "ftar";
    h.root_sh(
        id,
        "mkdir -p /workspace/t/d/e && echo one > /workspace/t/a.txt && \
         head -c 300000 /dev/urandom > /workspace/t/d/e/blob && chmod 0750 /workspace/t/d && \
         ln -s a.txt /workspace/t/link && ln -s /etc/passwd /workspace/t/abs",
    )
    .await;
    let tar = f.download_tar(id, "/workspace/t").await.unwrap();
    let mut archive = Vec::new();
    Box::into_pin(Box::new(tar))
        .read_to_end(&mut archive)
        .await
        .unwrap();
    let mut names = Vec::new();
    for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
        let entry = entry.unwrap();
        names.push((
            entry.path().unwrap().to_string_lossy().into_owned(),
            entry.header().entry_type(),
        ));
    }
    let just_names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        just_names,
        [
            "t/",
            "t/a.txt",
            "t/abs",
            "t/d/",
            "t/d/e/",
            "t/d/e/blob",
            "t/link"
        ]
    );
    assert!(names.contains(&("t/link".into(), tar::EntryType::Symlink)));

    // Round trip into another directory.
    let summary = f
        .upload_tar(id, "/workspace/copy", bytes(&archive), None)
        .await
        .unwrap();
    assert_eq!(summary.entries, 7);
    assert_eq!(summary.bytes, 4 + 300000);
    let check = h
        .root_sh(
            id,
            "cd /workspace && cmp t/d/e/blob copy/t/d/e/blob && readlink copy/t/link copy/t/abs && \
             stat -c %a copy/t/d",
        )
        .await;
    assert_eq!(check, "a.txt\n/etc/passwd\n750\n");

    // A single file is named by its base name.
    let tar = f.download_tar(id, "/workspace/t/a.txt").await.unwrap();
    let mut one = Vec::new();
    Box::into_pin(Box::new(tar))
        .read_to_end(&mut one)
        .await
        .unwrap();
    let entries: Vec<String> = tar::Archive::new(&one[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["a.txt"]);

    // Hostile archives: `..`, absolute names, writing through a planted symlink.
    fn archive_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }
    fn raw_name(h: &mut tar::Header, name: &str) {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    let dotdot = archive_of(|b| {
        let mut h = tar::Header::new_gnu();
        raw_name(&mut h, "../escaped.txt");
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
    });
    assert!(matches!(
        f.upload_tar(id, "/workspace/up1", bytes(&dotdot), None)
            .await,
        Err(DriverError::PermissionDenied(_))
    ));
    assert!(matches!(
        f.stat(id, "/workspace/escaped.txt").await,
        Err(DriverError::NotFound(_))
    ));
    let absolute = archive_of(|b| {
        let mut h = tar::Header::new_gnu();
        raw_name(&mut h, "/workspace/abs.txt");
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
    });
    assert!(f
        .upload_tar(id, "/workspace/up2", bytes(&absolute), None)
        .await
        .is_err());
    assert!(f.stat(id, "/workspace/abs.txt").await.is_err());
    let through_link = archive_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "out", "/workspace/target").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "out/planted.txt", &b"bad"[..])
            .unwrap();
    });
    h.root_sh(id, "mkdir -p /workspace/target").await;
    assert!(matches!(
        f.upload_tar(id, "/workspace/up3", bytes(&through_link), None)
            .await,
        Err(DriverError::PermissionDenied(_))
    ));
    assert!(matches!(
        f.stat(id, "/workspace/target/planted.txt").await,
        Err(DriverError::NotFound(_))
    ));

    // The content limit.
    assert!(matches!(
        f.upload_tar(id, "/workspace/up4", bytes(&archive), Some(1000))
            .await,
        Err(DriverError::TooLarge(_))
    ));

    // A base-256 size near u64::MAX (the limit check saturates; sizes that
    // would wrap the archive offset the tar reader itself refuses): too
    // large, and nothing of that entry is written. Entries before it stay.
    let mut huge = Vec::new();
    let mut hd = tar::Header::new_gnu();
    hd.set_size(5000);
    hd.set_mode(0o644);
    hd.set_path("first.txt").unwrap();
    hd.set_cksum();
    huge.extend_from_slice(hd.as_bytes());
    huge.resize(512 + 5120, b'a');
    let claimed = u64::MAX - (1 << 20);
    let mut hd = tar::Header::new_gnu();
    hd.set_size(0);
    hd.set_mode(0o644);
    hd.set_path("huge.bin").unwrap();
    let field = &mut hd.as_mut_bytes()[124..136];
    field.fill(0);
    field[0] = 0x80;
    field[4..].copy_from_slice(&claimed.to_be_bytes());
    hd.set_cksum();
    assert_eq!(hd.entry_size().unwrap(), claimed);
    huge.extend_from_slice(hd.as_bytes());
    huge.resize(huge.len() + 200_000, b'x');
    let refused = f
        .upload_tar(id, "/workspace/up5", bytes(&huge), Some(100_000))
        .await;
    assert!(
        matches!(refused, Err(DriverError::TooLarge(_))),
        "{refused:?}"
    );
    assert_eq!(
        f.stat(id, "/workspace/up5/first.txt").await.unwrap().size,
        5000
    );
    assert!(matches!(
        f.stat(id, "/workspace/up5/huge.bin").await,
        Err(DriverError::NotFound(_))
    ));
}

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a watch event within 5 s")
        .expect("the watch is still open")
}

/// Waits for an event matching `pred`, skipping others (attribute noise).
async fn expect_event(
    rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>,
    pred: impl Fn(&WatchEvent) -> bool,
) -> WatchEvent {
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        match ev {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(ev)) => seen.push(ev),
            _ => panic!("no matching event; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_create_modify_delete_and_rename() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("fwatch")).await;
    let f = h.files();
    let id = "fwatch";
    f.mkdir(id, "/workspace/w/old", None).await.unwrap();
    let mut rx = f.watch(id, "/workspace/w", true).await.unwrap();

    f.write(id, spec("/workspace/w/a.txt"), bytes(b"1"))
        .await
        .unwrap();
    // The write lands as a rename of the temp file into place.
    let ev = expect_event(&mut rx, |e| e.path == "/workspace/w/a.txt").await;
    assert!(
        matches!(ev.kind, WatchKind::Renamed | WatchKind::Created),
        "{ev:?}"
    );
    h.root_sh(id, "echo more >> /workspace/w/a.txt").await;
    expect_event(&mut rx, |e| {
        e.kind == WatchKind::Modified && e.path == "/workspace/w/a.txt"
    })
    .await;
    h.root_sh(id, "mv /workspace/w/a.txt /workspace/w/b.txt")
        .await;
    let ev = expect_event(&mut rx, |e| e.kind == WatchKind::Renamed).await;
    assert_eq!(
        (ev.path.as_str(), ev.from.as_deref()),
        ("/workspace/w/b.txt", Some("/workspace/w/a.txt"))
    );
    h.root_sh(id, "rm /workspace/w/b.txt").await;
    let ev = expect_event(&mut rx, |e| e.kind == WatchKind::Deleted).await;
    assert_eq!(ev.path, "/workspace/w/b.txt");
    // Recursive: existing and new subdirectories.
    h.root_sh(id, "touch /workspace/w/old/x").await;
    expect_event(&mut rx, |e| {
        e.kind == WatchKind::Created && e.path == "/workspace/w/old/x"
    })
    .await;
    h.root_sh(id, "mkdir /workspace/w/new").await;
    let ev = expect_event(&mut rx, |e| e.path == "/workspace/w/new").await;
    assert!(ev.is_dir && ev.kind == WatchKind::Created);
    h.root_sh(id, "echo y > /workspace/w/new/y").await;
    expect_event(&mut rx, |e| {
        e.kind == WatchKind::Modified && e.path == "/workspace/w/new/y"
    })
    .await;
    // Paths follow a renamed directory.
    h.root_sh(
        id,
        "mv /workspace/w/new /workspace/w/renamed && touch /workspace/w/renamed/z",
    )
    .await;
    expect_event(&mut rx, |e| e.path == "/workspace/w/renamed/z").await;
    // Moving out of the tree is a deletion.
    h.root_sh(id, "mv /workspace/w/old /workspace/gone").await;
    let ev = expect_event(&mut rx, |e| e.kind == WatchKind::Deleted).await;
    assert_eq!(ev.path, "/workspace/w/old");
    let _ = next_event;

    // Dropping the receiver ends the agent's watch thread.
    let threads = |s: String| s.trim().parse::<u32>().unwrap();
    let before = threads(h.root_sh(id, "ls /proc/1/task | wc -l").await);
    drop(rx);
    let mut after = before;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = threads(h.root_sh(id, "ls /proc/1/task | wc -l").await);
        if after < before {
            break;
        }
    }
    assert!(
        after < before,
        "watch thread still running ({before} -> {after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_leave_the_sandbox_root() {
    require_root!();
    let h = Harness::new();
    h.create(&h.sandbox_spec("fescape")).await;
    let f = h.files();
    let id = "fescape";
    // A host file the sandbox must never see: the data dir is under the
    // host's /tmp, which the sandbox does not share.
    let host_dir = std::fs::canonicalize(h.data.path()).unwrap();
    let secret = host_dir.join("host-secret.txt");
    std::fs::write(&secret, b"host secret").unwrap();
    let secret_path = secret.to_string_lossy().into_owned();
    let host_dir_s = host_dir.to_string_lossy().into_owned();
    h.root_sh(
        id,
        &format!(
            "ln -s {secret_path} /workspace/abs-link && ln -s / /workspace/root-link && \
             ln -s ../../../../../../{host_dir_s} /workspace/rel-link && ln -s {host_dir_s} /workspace/dir-link"
        ),
    )
    .await;
    let attempts = [
        format!("/../../../..{secret_path}"),
        format!("/workspace/../../..{secret_path}"),
        "/workspace/abs-link".to_string(),
        format!("/workspace/root-link{secret_path}"),
        "/workspace/rel-link/host-secret.txt".to_string(),
        "/workspace/dir-link/host-secret.txt".to_string(),
        format!("/proc/self/root{secret_path}"),
        format!("/proc/1/root{secret_path}"),
        format!("/proc/self/root/..{secret_path}"),
        format!("/proc/self/cwd/../../..{secret_path}"),
    ];
    for path in &attempts {
        match f.read(id, path, 0, None).await {
            Ok((_, mut s)) => {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                assert_ne!(got, b"host secret", "{path} leaked the host file");
                panic!("{path} opened something: {got:?}");
            }
            Err(DriverError::NotFound(_) | DriverError::PermissionDenied(_)) => {}
            Err(e) => panic!("{path}: unexpected {e:?}"),
        }
    }
    // Writes through those links land inside the sandbox, never on the host.
    for path in [
        "/workspace/dir-link/written.txt".to_string(),
        "/workspace/rel-link/written2.txt".to_string(),
        format!("/workspace/root-link{host_dir_s}/written3.txt"),
    ] {
        let _ = f.write(id, spec(&path), bytes(b"x")).await;
    }
    let _ = f
        .write(id, spec("/workspace/abs-link"), bytes(b"replaced"))
        .await;
    let _ = f
        .remove(id, "/workspace/dir-link/host-secret.txt", false)
        .await;
    let _ = f
        .rename(
            id,
            "/workspace/dir-link/host-secret.txt",
            "/workspace/stolen",
            false,
        )
        .await;
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");
    for name in ["written.txt", "written2.txt", "written3.txt"] {
        assert!(
            !host_dir.join(name).exists(),
            "{name} was written on the host"
        );
    }
    assert!(f.stat(id, "/workspace/stolen").await.is_err());
    // Magic links are refused outright.
    assert!(matches!(
        f.stat(id, "/proc/self/root/etc/hostname").await,
        Err(DriverError::PermissionDenied(_))
    ));
    // find/list/tar do not follow symlinks out.
    let found = f
        .find(id, "/workspace", "**/host-secret.txt", 10)
        .await
        .unwrap();
    assert!(found.items.is_empty(), "{:?}", found.items);
}
