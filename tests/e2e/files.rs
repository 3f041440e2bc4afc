//! End-to-end: the file API through the real daemon, over HTTP and through
//! the `warren` CLI (cp, files, diff).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "file_api/mod.rs"]
mod file_api;
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use file_api::{enc, files_url, host_sha256, pattern_bytes, request, request_streamed, Resp};
use harness::Daemon;

fn put(d: &Daemon, id: &str, path: &str, extra: &str, body: &[u8]) -> Resp {
    request(&d.socket, "PUT", &files_url(id, "", path, extra), &[], body)
}

fn get(d: &Daemon, id: &str, suffix: &str, path: &str, extra: &str) -> Resp {
    request(
        &d.socket,
        "GET",
        &files_url(id, suffix, path, extra),
        &[],
        b"",
    )
}

fn get_range(d: &Daemon, id: &str, path: &str, range: &str) -> Resp {
    request(
        &d.socket,
        "GET",
        &files_url(id, "", path, ""),
        &[("Range", range)],
        b"",
    )
}

fn post_json(d: &Daemon, url: &str, body: serde_json::Value) -> Resp {
    request(
        &d.socket,
        "POST",
        url,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn sh(d: &Daemon, id: &str, script: &str) -> String {
    let out = d.warren(&["exec", id, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec {script:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn warren_stdin(d: &Daemon, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(harness::warren_bin())
        .arg("--data-dir")
        .arg(d.data_dir())
        .arg("--socket")
        .arg(&d.socket)
        .arg("--no-autostart")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn write_read_round_trip_with_ranges_and_metadata() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let data = pattern_bytes(100_000, 3);

    let r = put(&d, &id, "/workspace/dir/a.bin", "mode=0640", &data);
    assert_eq!(r.status, 200, "{}", r.text());
    let stat = r.json();
    assert_eq!(stat["path"], "/workspace/dir/a.bin");
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["size"], 100_000);
    assert_eq!(stat["mode"], 0o640);

    let r = get(&d, &id, "", "/workspace/dir/a.bin", "");
    assert_eq!(r.status, 200);
    assert!(r.body == data, "downloaded bytes differ");
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-warren-mode"), Some("0640"));
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));

    let r = get_range(&d, &id, "/workspace/dir/a.bin", "bytes=10-19");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(r.body, &data[10..20]);
    let r = get_range(&d, &id, "/workspace/dir/a.bin", "bytes=-5");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[99_995..]);
    assert_eq!(r.header("content-range"), Some("bytes 99995-99999/100000"));
    let r = get_range(&d, &id, "/workspace/dir/a.bin", "bytes=99990-");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[99_990..]);
    let r = get_range(&d, &id, "/workspace/dir/a.bin", "bytes=100000-");
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(r.code(), "range_not_satisfiable");
    assert_eq!(r.header("content-range"), Some("bytes */100000"));

    // Overwriting keeps nothing of the old content.
    let r = put(&d, &id, "/workspace/dir/a.bin", "", b"short");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&d, &id, "", "/workspace/dir/a.bin", "").body, b"short");

    let r = get(&d, &id, "/stat", "/workspace/dir", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["kind"], "dir");
    assert!(r.json()["mtime"].as_i64().unwrap() > 1_600_000_000);
    let r = get(&d, &id, "/exists", "/workspace/dir/a.bin", "");
    assert_eq!(
        r.json(),
        serde_json::json!({"exists": true, "kind": "file"})
    );
    let r = get(&d, &id, "/exists", "/workspace/nope", "");
    assert_eq!(r.json(), serde_json::json!({"exists": false}));

    // mkdir, list (depth 1 and 2), move.
    let url = format!("/v1/sandboxes/{id}/files/mkdir");
    let r = post_json(
        &d,
        &url,
        serde_json::json!({"path": "/workspace/dir/sub/deep", "mode": 0o700}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["mode"], 0o700);
    assert_eq!(
        put(&d, &id, "/workspace/dir/sub/deep/x", "", b"x").status,
        200
    );
    let r = get(&d, &id, "/list", "/workspace/dir", "");
    let paths: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/workspace/dir/a.bin", "/workspace/dir/sub"]);
    let r = get(&d, &id, "/list", "/workspace/dir", "depth=3");
    assert_eq!(
        r.json()["entries"].as_array().unwrap().len(),
        4,
        "{}",
        r.text()
    );

    let url = format!("/v1/sandboxes/{id}/files/move");
    assert_eq!(put(&d, &id, "/workspace/other", "", b"o").status, 200);
    let r = post_json(
        &d,
        &url,
        serde_json::json!({"from": "/workspace/dir/a.bin", "to": "/workspace/other"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.code(), "conflict");
    let r = post_json(
        &d,
        &url,
        serde_json::json!({"from": "/workspace/dir/a.bin", "to": "/workspace/other", "overwrite": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&d, &id, "", "/workspace/other", "").body, b"short");
    assert_eq!(get(&d, &id, "", "/workspace/dir/a.bin", "").status, 404);

    // Delete: a non-empty directory needs recursive.
    let del = |path: &str, extra: &str| {
        request(
            &d.socket,
            "DELETE",
            &files_url(&id, "", path, extra),
            &[],
            b"",
        )
    };
    let r = del("/workspace/dir", "recursive=false");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = del("/workspace/dir", "recursive=true");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/dir", "").json()["exists"],
        false
    );

    // The CLI sees the same files.
    let out = d.warren(&["files", "cat", &id, "/workspace/other"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"short");
    let stat = d.warren_json(&["files", "stat", &id, "/workspace/other"]);
    assert_eq!(stat["size"], 5);
    let ls = d.warren_json(&["files", "ls", &id, "/workspace"]);
    assert_eq!(ls["entries"][0]["path"], "/workspace/other");
    let out = d.warren(&["files", "ls", &id, "/workspace"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/workspace/other"), "{text}");
    assert!(d
        .warren(&["files", "mkdir", &id, "/workspace/m/n"])
        .status
        .success());
    assert!(d
        .warren(&["files", "mv", &id, "/workspace/m/n", "/workspace/n2"])
        .status
        .success());
    assert!(d
        .warren(&["files", "rm", "-r", &id, "/workspace/m"])
        .status
        .success());
    let out = d.warren(&["files", "stat", &id, "/workspace/m"]);
    assert_one_line_error(&out, "not_found");
}

#[test]
fn errors_have_clear_statuses_and_messages() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);

    let r = get(&d, &id, "", "/workspace/missing", "");
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "not_found"),
        "{}",
        r.text()
    );
    assert!(
        r.message().contains("/workspace/missing"),
        "{}",
        r.message()
    );

    let r = get(&d, "nosuchsandbox", "", "/workspace/x", "");
    assert_eq!(r.status, 404);
    assert!(r.message().contains("nosuchsandbox"), "{}", r.message());

    let r = get(&d, &id, "", "/workspace", "");
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.text()
    );

    for (url, param) in [
        (files_url(&id, "", "relative/path", ""), "path"),
        (format!("/v1/sandboxes/{id}/files?path=/a%00b"), "path"),
        (
            files_url(&id, "", &format!("/{}", "a".repeat(5000)), ""),
            "path",
        ),
        (files_url(&id, "/list", "/workspace", "depth=0"), "depth"),
        (files_url(&id, "/list", "/workspace", "depth=33"), "depth"),
        (
            files_url(&id, "/find", "/workspace", "glob=*&limit=10001"),
            "limit",
        ),
        (
            files_url(&id, "/tar", "/workspace", "compression=gzip"),
            "compression",
        ),
        (files_url(&id, "", "/workspace/x", "mode=0999"), "mode"),
    ] {
        let method = if url.contains("mode=") { "PUT" } else { "GET" };
        let r = request(&d.socket, method, &url, &[], b"");
        assert_eq!(r.status, 422, "{url}: {}", r.text());
        assert_eq!(r.code(), "invalid_value");
        assert!(r.message().contains(param), "{url}: {}", r.message());
    }
    let r = post_json(
        &d,
        &format!("/v1/sandboxes/{id}/files/move"),
        serde_json::json!({"from": "/workspace/a", "to": "b"}),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.message().contains("to must be an absolute path"),
        "{}",
        r.message()
    );

    // 403: a non-root sandbox user reading a root-only file.
    let id = d.create(&["--user", "agent"]);
    let out = d.warren(&[
        "exec",
        "-u",
        "root",
        &id,
        "--",
        "sh",
        "-c",
        "echo secret > /workspace/root-only && chmod 600 /workspace/root-only",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = get(&d, &id, "", "/workspace/root-only", "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.code(), "permission_denied");
    assert!(!r.text().contains("secret\n"));
    let out = d.warren(&["files", "cat", &id, "/workspace/root-only"]);
    assert_one_line_error(&out, "permission_denied");
}

#[test]
fn uploads_over_the_maximum_get_413_and_leave_no_file() {
    require_root!();
    let d = Daemon::start_with_serve_args(&["--max-upload-mb", "1"]);
    let id = d.create(&[]);
    let big = pattern_bytes(2 * 1024 * 1024, 9);

    // Refused from Content-Length alone.
    let r = put(&d, &id, "/workspace/big", "", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.code(), "too_large");
    assert!(r.message().contains("--max-upload-mb"), "{}", r.message());
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/big", "").json()["exists"],
        false
    );

    // Chunked: refused by the driver after 1 MiB, and nothing stays.
    let url = files_url(&id, "", "/workspace/big-chunked", "");
    let r = request_streamed(&d.socket, "PUT", &url, &[], None, |w| {
        for chunk in big.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
        }
    });
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.code(), "too_large");
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/big-chunked", "").json()["exists"],
        false
    );
    let r = get(&d, &id, "/list", "/workspace", "");
    assert_eq!(
        r.json()["entries"],
        serde_json::json!([]),
        "leftovers: {}",
        r.text()
    );

    // Through the CLI, with far more than a socket buffer still unsent when
    // the daemon answers: one clear line, non-zero exit.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(200 * 1024 * 1024)
        .unwrap();
    let out = d.warren(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/workspace/big"),
    ]);
    assert_one_line_error(&out, "too_large");
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // Real bytes: a sparse file would travel as a sparse tar entry, which
    // holds almost no content.
    std::fs::write(tree.join("big"), &big).unwrap();
    let out = d.warren(&[
        "cp",
        tree.to_str().unwrap(),
        &format!("{id}:/workspace/tree"),
    ]);
    assert_one_line_error(&out, "too_large");
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/tree/big", "").json()["exists"],
        false
    );

    // Within the limit is fine.
    let r = put(&d, &id, "/workspace/small", "", &big[..512 * 1024]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_full_disk_is_507_and_leaves_no_file() {
    require_root!();
    let d = Daemon::start();
    // 32 MiB is the smallest disk a sandbox can have.
    let id = d.create(&["--disk", "32"]);
    let chunk = pattern_bytes(1024 * 1024, 1);
    let url = files_url(&id, "", "/workspace/huge", "");
    let r = request_streamed(&d.socket, "PUT", &url, &[], Some(64 * 1024 * 1024), |w| {
        for _ in 0..64 {
            w.write_all(&chunk).unwrap();
        }
    });
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.code(), "disk_full");
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/huge", "").json()["exists"],
        false
    );
    // The disk is usable again once the partial file is gone.
    let r = put(&d, &id, "/workspace/after", "", &chunk);
    assert_eq!(r.status, 200, "{}", r.text());

    // Through the CLI: the refusal, not a broken connection.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("huge");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(200 * 1024 * 1024)
        .unwrap();
    let out = d.warren(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/workspace/huge"),
    ]);
    assert_one_line_error(&out, "disk_full");
    assert_eq!(
        get(&d, &id, "/exists", "/workspace/huge", "").json()["exists"],
        false
    );
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(
        root.join("sub/big.bin"),
        pattern_bytes(3 * 1024 * 1024 + 7, 5),
    )
    .unwrap();
    std::fs::write(root.join("sub/deeper/c.rs"), b"fn main() {}\n").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut other: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    other.sort();
    assert_eq!(names, other, "{} vs {}", a.display(), b.display());
    for name in names {
        let (x, y) = (a.join(&name), b.join(&name));
        let mx = std::fs::symlink_metadata(&x).unwrap();
        let my = std::fs::symlink_metadata(&y).unwrap();
        assert_eq!(mx.file_type(), my.file_type(), "{}", y.display());
        if mx.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&x).unwrap(),
                std::fs::read_link(&y).unwrap()
            );
        } else if mx.is_dir() {
            assert_same_tree(&x, &y);
        } else {
            assert_eq!(host_sha256(&x), host_sha256(&y), "{}", y.display());
        }
    }
}

fn sandbox_sha256(d: &Daemon, id: &str, path: &str) -> String {
    sh(d, id, &format!("sha256sum {path}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn cp_copies_files_and_trees_both_ways() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let tmp = tempfile::tempdir().unwrap();

    // One file up and back.
    let local = tmp.path().join("f.bin");
    std::fs::write(&local, pattern_bytes(5 * 1024 * 1024 + 3, 7)).unwrap();
    let up = d.warren_json(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/workspace/f.bin"),
    ]);
    assert_eq!(up["bytes"], 5 * 1024 * 1024 + 3);
    assert_eq!(up["files"], 1);
    assert!(up["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        sandbox_sha256(&d, &id, "/workspace/f.bin"),
        host_sha256(&local)
    );
    let back = tmp.path().join("f.back");
    let down = d.warren_json(&[
        "cp",
        &format!("{id}:/workspace/f.bin"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(down["bytes"], 5 * 1024 * 1024 + 3);
    assert_eq!(host_sha256(&back), host_sha256(&local));

    // Into an existing directory: keeps its name.
    sh(&d, &id, "mkdir -p /workspace/into");
    d.warren_json(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/workspace/into"),
    ]);
    assert_eq!(
        sandbox_sha256(&d, &id, "/workspace/into/f.bin"),
        host_sha256(&local)
    );

    // stdin and stdout.
    let out = warren_stdin(
        &d,
        &["cp", "-", &format!("{id}:/workspace/stdin.txt")],
        b"from stdin\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.warren(&["cp", &format!("{id}:/workspace/stdin.txt"), "-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"from stdin\n");

    // A directory tree up (it becomes /workspace/tree) and back.
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let up = d.warren_json(&[
        "cp",
        tree.to_str().unwrap(),
        &format!("{id}:/workspace/tree"),
    ]);
    assert_eq!(up["files"], 4, "{up}");
    assert_eq!(up["bytes"], 6 + 3 * 1024 * 1024 + 7 + 13, "{up}");
    assert_eq!(
        sandbox_sha256(&d, &id, "/workspace/tree/sub/big.bin"),
        host_sha256(&tree.join("sub/big.bin"))
    );
    assert_eq!(sh(&d, &id, "readlink /workspace/tree/link"), "a.txt\n");
    let back = tmp.path().join("tree-back");
    let down = d.warren_json(&[
        "cp",
        &format!("{id}:/workspace/tree"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(down["files"], 4, "{down}");
    assert_same_tree(&tree, &back);
    // Into an existing local directory: keeps its name.
    let into = tmp.path().join("into");
    std::fs::create_dir(&into).unwrap();
    d.warren_json(&[
        "cp",
        &format!("{id}:/workspace/tree"),
        into.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &into.join("tree"));

    // Errors are one line.
    let out = d.warren(&[
        "cp",
        &format!("{id}:/workspace/none"),
        tmp.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "not_found");
    let out = d.warren(&["cp", "/etc/hostname", &format!("{id}:relative")]);
    assert_one_line_error(&out, "absolute");
}

#[test]
fn tar_round_trips_with_zstd() {
    require_root!();
    if Command::new("zstd").arg("--version").output().is_err() {
        eprintln!("skipped: the host has no zstd binary to check the stream with");
        return;
    }
    let d = Daemon::start();
    let id = d.create(&[]);
    let big = pattern_bytes(1024 * 1024, 2);
    assert_eq!(
        put(&d, &id, "/workspace/src/a.txt", "", b"alpha").status,
        200
    );
    assert_eq!(
        put(&d, &id, "/workspace/src/sub/b.bin", "", &big).status,
        200
    );

    let r = get(&d, &id, "/tar", "/workspace/src", "compression=zstd");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/zstd"));
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("src.tar.zst");
    std::fs::write(&archive, &r.body).unwrap();
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar -tf -", archive.display()))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    for name in ["src/", "src/a.txt", "src/sub/", "src/sub/b.bin"] {
        assert!(names.lines().any(|l| l == name), "{name} not in {names}");
    }
    let plain = get(&d, &id, "/tar", "/workspace/src", "");
    assert_eq!(plain.header("content-type"), Some("application/x-tar"));
    assert!(r.body.len() < plain.body.len(), "zstd did not compress");

    let r = request(
        &d.socket,
        "PUT",
        &files_url(&id, "/tar", "/workspace/dst", "compression=zstd"),
        &[],
        &r.body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], 5 + 1024 * 1024);
    assert!(r.json()["entries"].as_u64().unwrap() >= 4);
    assert_eq!(
        get(&d, &id, "", "/workspace/dst/src/a.txt", "").body,
        b"alpha"
    );
    assert!(get(&d, &id, "", "/workspace/dst/src/sub/b.bin", "").body == big);
}

#[test]
fn find_and_grep() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    for (path, body) in [
        (
            "/workspace/p/main.rs",
            "fn main() {\n    println!(\"Hello\");\n}\n",
        ),
        (
            "/workspace/p/src/lib.rs",
            "pub fn hello() {}\n// HELLO again\n",
        ),
        ("/workspace/p/README.md", "hello readme\n"),
    ] {
        assert_eq!(put(&d, &id, path, "", body.as_bytes()).status, 200);
    }
    let r = get(
        &d,
        &id,
        "/find",
        "/workspace/p",
        &format!("glob={}", enc("**/*.rs")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut found: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    assert_eq!(found, ["/workspace/p/main.rs", "/workspace/p/src/lib.rs"]);
    assert_eq!(r.json()["truncated"], false);
    let r = get(
        &d,
        &id,
        "/find",
        "/workspace/p",
        &format!("glob={}&limit=1", enc("**/*.rs")),
    );
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["truncated"], true);

    let r = get(
        &d,
        &id,
        "/grep",
        "/workspace/p",
        "pattern=hello&ignoreCase=true&glob=*.rs",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut matches: Vec<(String, u64)> = r.json()["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_owned(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    matches.sort();
    assert_eq!(
        matches,
        [
            ("/workspace/p/main.rs".to_owned(), 2),
            ("/workspace/p/src/lib.rs".to_owned(), 1),
            ("/workspace/p/src/lib.rs".to_owned(), 2),
        ]
    );
    let r = get(
        &d,
        &id,
        "/grep",
        "/workspace/p",
        &format!("pattern={}", enc("(")),
    );
    assert_eq!(r.status, 422, "{}", r.text());

    let out = d.warren(&["files", "find", &id, "/workspace/p", "*.md"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/workspace/p/README.md\n"
    );
    let out = d.warren(&["files", "grep", &id, "/workspace/p", "readme"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/workspace/p/README.md:1:hello readme\n"
    );
    let out = d.warren(&["files", "grep", &id, "/workspace/p", "absent-word"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn watch_sees_a_file_created_by_exec() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    sh(&d, &id, "mkdir -p /workspace/w/sub");
    let mut child = Command::new(harness::warren_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "--no-autostart",
            "--json",
            "files",
            "watch",
            "-r",
            &id,
            "/workspace/w",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Keep creating until the watch (which may take a moment to start) sees one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let seen = loop {
        assert!(Instant::now() < deadline, "the watch saw nothing");
        n += 1;
        sh(&d, &id, &format!("echo hi > /workspace/w/sub/f{n}.txt"));
        let mut found = None;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["kind"] == "created"
                && event["path"]
                    .as_str()
                    .unwrap()
                    .starts_with("/workspace/w/sub/f")
            {
                found = Some(event);
                break;
            }
        }
        if let Some(event) = found {
            break event;
        }
    };
    assert_eq!(seen["isDir"], false);
}

fn changes_of(d: &Daemon, id: &str) -> Vec<serde_json::Value> {
    d.warren_json(&["diff", id])["changes"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn diff_lists_added_modified_and_deleted_paths() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let before = changes_of(&d, &id);
    // /media and /mnt are empty directories of the host image's own layer.
    sh(
        &d,
        &id,
        "echo hello > /workspace/new.txt && chmod 700 /media && rmdir /mnt",
    );
    let after = changes_of(&d, &id);
    let new: Vec<&serde_json::Value> = after.iter().filter(|c| !before.contains(c)).collect();
    let expected = [
        serde_json::json!({"path": "/media", "kind": "modified", "size": 0, "isDir": true}),
        serde_json::json!({"path": "/mnt", "kind": "deleted", "size": 0, "isDir": true}),
        serde_json::json!({"path": "/workspace/new.txt", "kind": "added", "size": 6, "isDir": false}),
    ];
    assert_eq!(
        new,
        expected.iter().collect::<Vec<_>>(),
        "all changes: {after:?}"
    );

    let out = d.warren(&["diff", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |kind: &str, path: &str| {
        text.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&kind) && cols.get(1) == Some(&path)
        })
    };
    assert!(row("A", "/workspace/new.txt"), "{text}");
    assert!(row("M", "/media/"), "{text}");
    assert!(row("D", "/mnt/"), "{text}");

    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("changes.tar");
    let out = d.warren(&["diff", "--tar", tar.to_str().unwrap(), &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names
            .lines()
            .any(|l| l.trim_start_matches("./") == "workspace/new.txt"),
        "{names}"
    );
    assert!(
        names
            .lines()
            .any(|l| l.trim_start_matches("./") == ".wh.mnt"),
        "{names}"
    );

    if Command::new("zstd").arg("--version").output().is_ok() {
        let r = request(
            &d.socket,
            "GET",
            &format!("/v1/sandboxes/{id}/changes?format=tar&compression=zstd"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/zstd"));
        let zst = tmp.path().join("changes.tar.zst");
        std::fs::write(&zst, &r.body).unwrap();
        let listing = Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -tf -", zst.display()))
            .output()
            .unwrap();
        let zst_names = String::from_utf8_lossy(&listing.stdout);
        assert_eq!(zst_names, names, "the zstd tar differs from the plain one");
    }

    let r = request(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/changes?format=xml"),
        &[],
        b"",
    );
    assert_eq!(r.status, 422);
}

/// Over TCP (with an API key) trees travel zstd-compressed both ways.
#[test]
fn cp_over_tcp_round_trips_trees_and_files() {
    require_root!();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(Some(addr.clone()));
    let key = d.warren_json(&["keys", "create", "files"]);
    let secret = key["secret"].as_str().unwrap().to_string();
    let id = d.create(&[]);
    let url = format!("http://{addr}");
    let tcp = |args: &[&str]| {
        let mut all = vec!["--url", url.as_str(), "--api-key", secret.as_str()];
        all.extend_from_slice(args);
        d.warren_json(&all)
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let up = tcp(&[
        "cp",
        tree.to_str().unwrap(),
        &format!("{id}:/workspace/tree"),
    ]);
    assert_eq!(up["files"], 4, "{up}");
    assert_eq!(
        sandbox_sha256(&d, &id, "/workspace/tree/sub/big.bin"),
        host_sha256(&tree.join("sub/big.bin"))
    );
    let back = tmp.path().join("back");
    let down = tcp(&[
        "cp",
        &format!("{id}:/workspace/tree"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(down["files"], 4, "{down}");
    assert_same_tree(&tree, &back);
    let file = tmp.path().join("one");
    tcp(&[
        "cp",
        &format!("{id}:/workspace/tree/a.txt"),
        file.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&file).unwrap(), b"alpha\n");
    // Without the key: one clear line.
    let out = d.warren(&[
        "--url",
        &url,
        "cp",
        &format!("{id}:/workspace/tree/a.txt"),
        "-",
    ]);
    assert_one_line_error(&out, "unauthorized");
}

#[test]
fn a_directory_download_with_an_unreadable_entry_fails_instead_of_being_partial() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&["--user", "agent"]);
    let out = d.warren(&[
        "exec",
        "-u",
        "root",
        &id,
        "--",
        "sh",
        "-c",
        "mkdir -p /workspace/tree && echo ok > /workspace/tree/a-readable \
         && echo secret > /workspace/tree/m-root-only && chmod 600 /workspace/tree/m-root-only \
         && echo later > /workspace/tree/z-after && chmod 755 /workspace/tree \
         && chmod 644 /workspace/tree/a-readable /workspace/tree/z-after",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Over HTTP the archive never completes: either an error status or a
    // response body cut off (no end of the chunked body).
    for extra in ["", "compression=zstd"] {
        let got = std::panic::catch_unwind(|| get(&d, &id, "/tar", "/workspace/tree", extra));
        if let Ok(r) = got {
            assert_ne!(
                r.status, 200,
                "{extra}: a partial archive was served as complete"
            );
        }
    }

    // The CLI exits non-zero with one line.
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("copy");
    let out = d.warren(&[
        "cp",
        &format!("{id}:/workspace/tree"),
        dest.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "incomplete");

    // Readable by the user: the same copy succeeds.
    let out = d.warren(&[
        "exec",
        "-u",
        "root",
        &id,
        "--",
        "chmod",
        "644",
        "/workspace/tree/m-root-only",
    ]);
    assert!(out.status.success());
    let dest = tmp.path().join("copy2");
    let out = d.warren(&[
        "cp",
        &format!("{id}:/workspace/tree"),
        dest.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dest.join("z-after")).unwrap(), b"later\n");
    assert_eq!(
        std::fs::read(dest.join("m-root-only")).unwrap(),
        b"secret\n"
    );
}

#[test]
fn a_symlink_loop_is_invalid_not_forbidden() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    sh(
        &d,
        &id,
        "mkdir -p /workspace/loop && ln -s b /workspace/loop/a && ln -s a /workspace/loop/b",
    );
    let r = get(&d, &id, "", "/workspace/loop/a/x", "");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.message()
            .contains("too many levels of symbolic links: /workspace/loop/a/x"),
        "{}",
        r.message()
    );
}
