//! Security regressions, file API: every path given to the REST file API is
//! resolved inside the sandbox's root. `..`, absolute and relative symlinks,
//! `/proc/*/root`, symlinks swapped while a request runs, hostile tar
//! entries and hard links must never read or change a host file.
//!
//! Each test plants a host secret (`/root/warren-secret-…`, 0600) and a host
//! directory (`/var/tmp/warren-host-…/` holding one marker file); the `host`
//! image hides both (its /root and /var are private). After every attempt
//! the secret is unchanged and was never returned, and the directory holds
//! only its marker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/file_api/mod.rs"]
mod file_api;
#[path = "../e2e/harness/mod.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use file_api::{enc, files_url, raw_tar, raw_tar_entry, request, Resp};
use harness::Daemon;

/// The host secret and directory of one test; removed on drop.
struct HostFixture {
    secret: PathBuf,
    content: String,
    dir: PathBuf,
    marker_content: String,
}

impl HostFixture {
    fn create(tag: &str) -> Self {
        let pid = std::process::id();
        let secret = PathBuf::from(format!("/root/warren-secret-{pid}-{tag}"));
        let content = format!("host-secret-{pid}-{tag}-do-not-leak");
        std::fs::write(&secret, &content).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = PathBuf::from(format!("/var/tmp/warren-host-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let marker_content = format!("host-marker-{pid}-{tag}");
        std::fs::write(dir.join("marker"), &marker_content).unwrap();
        Self {
            secret,
            content,
            dir,
            marker_content,
        }
    }

    fn secret_path(&self) -> &str {
        self.secret.to_str().unwrap()
    }

    fn dir_path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The secret is untouched and the directory holds only its marker.
    fn assert_intact(&self, attempt: &str) {
        let now = std::fs::read_to_string(&self.secret).unwrap();
        assert_eq!(now, self.content, "{attempt}: the host secret changed");
        let mode = std::fs::metadata(&self.secret)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600, "{attempt}: the host secret's mode changed");
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["marker"],
            "{attempt}: something appeared in the host directory"
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.join("marker")).unwrap(),
            self.marker_content,
            "{attempt}: the host marker changed"
        );
    }

    /// Nothing of the host's files is in an answer.
    fn assert_not_leaked(&self, attempt: &str, resp: &Resp) {
        let body = String::from_utf8_lossy(&resp.body);
        assert!(
            !body.contains(&self.content),
            "{attempt}: the host secret was returned (HTTP {})",
            resp.status
        );
        assert!(
            !body.contains(&self.marker_content),
            "{attempt}: a host directory's file was returned (HTTP {})",
            resp.status
        );
    }
}

impl Drop for HostFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.secret);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(d: &Daemon, id: &str, script: &str) {
    let out = d.warren(&["exec", id, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every read-like route on `path`; each answer is checked for leaks.
fn read_everything(d: &Daemon, id: &str, fx: &HostFixture, path: &str) {
    for (suffix, extra) in [
        ("", ""),
        ("/stat", ""),
        ("/exists", ""),
        ("/list", "depth=3"),
        ("/tar", ""),
        ("/find", "glob=**"),
        ("/grep", "pattern=host"),
    ] {
        let r = request(
            &d.socket,
            "GET",
            &files_url(id, suffix, path, extra),
            &[],
            b"",
        );
        let attempt = format!("GET files{suffix} {path}");
        fx.assert_not_leaked(&attempt, &r);
        if r.status == 200 && (suffix == "/list" || suffix == "/find") {
            let key = if suffix == "/list" {
                "entries"
            } else {
                "items"
            };
            let secret_name = fx.secret.file_name().unwrap().to_str().unwrap();
            for entry in r.json()[key].as_array().unwrap() {
                let listed = entry["path"].as_str().unwrap();
                assert!(
                    !listed.ends_with(&format!("/{secret_name}")) && !listed.ends_with("/marker"),
                    "{attempt}: listed a host file: {listed}"
                );
            }
        }
    }
    let r = request(
        &d.socket,
        "GET",
        &files_url(id, "", path, ""),
        &[("Range", "bytes=0-")],
        b"",
    );
    fx.assert_not_leaked(&format!("GET range {path}"), &r);
}

/// Every write-like route on `path`; the host must not change.
fn write_everything(d: &Daemon, id: &str, fx: &HostFixture, path: &str) {
    let attempt = |what: &str| format!("{what} {path}");
    let r = request(
        &d.socket,
        "PUT",
        &files_url(id, "", path, "mode=0666"),
        &[],
        b"pwned",
    );
    fx.assert_not_leaked(&attempt("PUT"), &r);
    fx.assert_intact(&attempt("PUT"));
    let r = request(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/files/mkdir"),
        &[("Content-Type", "application/json")],
        serde_json::json!({ "path": format!("{path}/newdir") })
            .to_string()
            .as_bytes(),
    );
    fx.assert_not_leaked(&attempt("mkdir"), &r);
    fx.assert_intact(&attempt("mkdir"));
    let tar = raw_tar(&[raw_tar_entry(
        "dropped",
        tar::EntryType::Regular,
        None,
        b"pwned",
    )]);
    let r = request(
        &d.socket,
        "PUT",
        &files_url(id, "/tar", path, ""),
        &[],
        &tar,
    );
    fx.assert_not_leaked(&attempt("PUT tar"), &r);
    fx.assert_intact(&attempt("PUT tar"));
    let r = request(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/files/move"),
        &[("Content-Type", "application/json")],
        serde_json::json!({ "from": "/workspace/movable", "to": format!("{path}/moved") })
            .to_string()
            .as_bytes(),
    );
    fx.assert_not_leaked(&attempt("move"), &r);
    fx.assert_intact(&attempt("move"));
    for recursive in ["false", "true"] {
        let r = request(
            &d.socket,
            "DELETE",
            &files_url(
                id,
                "",
                &format!("{path}/marker"),
                &format!("recursive={recursive}"),
            ),
            &[],
            b"",
        );
        fx.assert_not_leaked(&attempt("DELETE marker"), &r);
        fx.assert_intact(&attempt("DELETE marker"));
    }
}

#[test]
fn dot_dot_paths_stay_inside_the_sandbox() {
    require_root!();
    let fx = HostFixture::create("dotdot");
    let d = Daemon::start();
    let id = d.create(&[]);
    sh(&d, &id, "echo movable > /workspace/movable");
    let secret = fx.secret_path().trim_start_matches('/').to_owned();
    let dir = fx.dir_path().trim_start_matches('/').to_owned();
    for path in [
        format!("/../../{secret}"),
        format!("/workspace/../../../{secret}"),
        format!("/workspace/./.././../tmp/../{secret}"),
        format!("/../../{dir}"),
        format!("/workspace/../../../../{dir}"),
    ] {
        read_everything(&d, &id, &fx, &path);
    }
    // The host secret's path does not exist inside the sandbox.
    let r = request(
        &d.socket,
        "GET",
        &files_url(&id, "", &format!("/../../{secret}"), ""),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    for path in [
        format!("/../../{dir}"),
        format!("/workspace/../../../../{dir}"),
    ] {
        sh(&d, &id, "echo movable > /workspace/movable");
        write_everything(&d, &id, &fx, &path);
    }
    for path in [
        format!("/../../{secret}"),
        format!("/workspace/../../../{secret}"),
    ] {
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", &path, ""),
            &[],
            b"pwned",
        );
        fx.assert_not_leaked("PUT ..", &r);
        fx.assert_intact(&format!("PUT {path}"));
    }
    fx.assert_intact("end");
}

#[test]
fn symlinks_resolve_inside_the_sandbox() {
    require_root!();
    let fx = HostFixture::create("symlink");
    let d = Daemon::start();
    let id = d.create(&[]);
    let (secret, dir) = (fx.secret_path(), fx.dir_path());
    sh(
        &d,
        &id,
        &format!(
            "cd /workspace && ln -s {secret} l && ln -s {dir} d && \
             ln -s ../../../../../..{secret} rel && ln -s ../../../../../..{dir} reld && \
             echo movable > movable"
        ),
    );
    for path in [
        "/workspace/l",
        "/workspace/rel",
        "/workspace/d",
        "/workspace/reld",
        "/workspace",
    ] {
        read_everything(&d, &id, &fx, path);
    }
    for path in [
        "/workspace/d/marker",
        "/workspace/reld/marker",
        "/workspace/l",
    ] {
        let r = request(&d.socket, "GET", &files_url(&id, "", path, ""), &[], b"");
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
    }
    for path in ["/workspace/l", "/workspace/rel"] {
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", path, ""),
            &[],
            b"pwned",
        );
        fx.assert_not_leaked("PUT through a symlink", &r);
        fx.assert_intact(&format!("PUT {path}"));
    }
    for path in ["/workspace/d", "/workspace/reld"] {
        sh(&d, &id, "echo movable > /workspace/movable");
        write_everything(&d, &id, &fx, path);
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", &format!("{path}/pwned"), ""),
            &[],
            b"pwned",
        );
        fx.assert_not_leaked("PUT into a symlinked directory", &r);
        fx.assert_intact(&format!("PUT {path}/pwned"));
    }
    // Removing the links removes only the links.
    for path in ["/workspace/l", "/workspace/d"] {
        let r = request(
            &d.socket,
            "DELETE",
            &files_url(&id, "", path, "recursive=true"),
            &[],
            b"",
        );
        assert!(
            r.status == 204 || r.status == 404,
            "DELETE {path}: {}",
            r.text()
        );
        fx.assert_intact(&format!("DELETE {path}"));
    }
    fx.assert_intact("end");
}

#[test]
fn proc_root_and_cwd_paths_do_not_reach_the_host() {
    require_root!();
    let fx = HostFixture::create("proc");
    let d = Daemon::start();
    let id = d.create(&[]);
    sh(&d, &id, "echo movable > /workspace/movable");
    let secret = fx.secret_path().to_owned();
    let dir = fx.dir_path().to_owned();
    for prefix in [
        "/proc/self/root",
        "/proc/thread-self/root",
        "/proc/1/root",
        "/proc/1/cwd/..",
        "/proc/self/cwd/../..",
        "/proc/1/root/proc/1/root",
    ] {
        read_everything(&d, &id, &fx, &format!("{prefix}{secret}"));
        read_everything(&d, &id, &fx, &format!("{prefix}{dir}"));
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", &format!("{prefix}{secret}"), ""),
            &[],
            b"pwned",
        );
        fx.assert_not_leaked("PUT /proc", &r);
        fx.assert_intact(&format!("PUT {prefix}{secret}"));
        sh(&d, &id, "echo movable > /workspace/movable");
        write_everything(&d, &id, &fx, &format!("{prefix}{dir}"));
    }
    fx.assert_intact("end");
}

#[test]
fn a_symlink_swapped_in_a_loop_never_leads_out() {
    require_root!();
    let fx = HostFixture::create("race");
    let d = Daemon::start();
    let id = d.create(&[]);
    let (secret, dir) = (fx.secret_path(), fx.dir_path());
    let script = format!(
        "cd /workspace; while :; do \
           echo benign > f.tmp; mv -fT f.tmp race; \
           ln -sfn {secret} l.tmp; mv -fT l.tmp race; \
           rm -rf raced; mkdir raced; \
           rm -rf raced; ln -sfn {dir} raced; \
         done"
    );
    let out = d.warren(&["exec", "-d", &id, "--", "sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..200 {
        let r = request(
            &d.socket,
            "GET",
            &files_url(&id, "", "/workspace/race", ""),
            &[],
            b"",
        );
        fx.assert_not_leaked(&format!("GET race #{i}"), &r);
        *statuses.entry(r.status).or_default() += 1;
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", "/workspace/race", ""),
            &[],
            format!("pwned {i}").as_bytes(),
        );
        fx.assert_not_leaked(&format!("PUT race #{i}"), &r);
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", &format!("/workspace/raced/pwned{i}"), ""),
            &[],
            b"pwned",
        );
        fx.assert_not_leaked(&format!("PUT raced #{i}"), &r);
        let r = request(
            &d.socket,
            "GET",
            &files_url(&id, "", "/workspace/raced/marker", ""),
            &[],
            b"",
        );
        fx.assert_not_leaked(&format!("GET raced/marker #{i}"), &r);
        if i % 20 == 0 {
            fx.assert_intact(&format!("race iteration {i}"));
        }
    }
    eprintln!("GET statuses during the race: {statuses:?}");
    fx.assert_intact("end of the race");
}

#[test]
fn tar_uploads_cannot_escape_their_directory() {
    require_root!();
    let fx = HostFixture::create("tar");
    let d = Daemon::start();
    let id = d.create(&[]);
    let (secret, dir) = (fx.secret_path(), fx.dir_path());
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let file = |name: &str| raw_tar_entry(name, Regular, None, b"pwned");
    let rel_dir = format!("../../../../../..{dir}");
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "dot-dot entry",
            vec![file(&format!("../../../../../..{dir}/dotdot"))],
        ),
        (
            "dot-dot in the middle",
            vec![file(&format!("a/../../../../../../..{dir}/middle"))],
        ),
        ("absolute entry", vec![file(&format!("{dir}/absolute"))]),
        (
            "absolute symlink then a file through it",
            vec![
                raw_tar_entry("l", Symlink, Some(dir), b""),
                file("l/through"),
            ],
        ),
        (
            "relative symlink then a file through it",
            vec![
                raw_tar_entry("r", Symlink, Some(&rel_dir), b""),
                file("r/through"),
            ],
        ),
        (
            "symlink to the secret then a file over it",
            vec![raw_tar_entry("s", Symlink, Some(secret), b""), file("s")],
        ),
        (
            "directory symlink then a directory and a file",
            vec![
                raw_tar_entry("ds", Symlink, Some(dir), b""),
                raw_tar_entry("ds/sub/", Directory, None, b""),
                file("ds/sub/deep"),
            ],
        ),
        (
            "hard link to the host secret",
            vec![raw_tar_entry("h", Link, Some(secret), b""), file("h")],
        ),
        (
            "hard link through a dot-dot",
            vec![raw_tar_entry(
                "h2",
                Link,
                Some(&format!("../../../../../..{secret}")),
                b"",
            )],
        ),
    ];
    for (n, (what, entries)) in cases.into_iter().enumerate() {
        let target = format!("/workspace/t{n}");
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "/tar", &target, ""),
            &[],
            &raw_tar(&entries),
        );
        eprintln!("{what}: HTTP {} {}", r.status, r.text());
        fx.assert_not_leaked(what, &r);
        fx.assert_intact(what);
        // Writing to whatever the archive left behind stays inside too.
        for name in ["l/after", "r/after", "s", "h", "ds/after"] {
            let r = request(
                &d.socket,
                "PUT",
                &files_url(&id, "", &format!("{target}/{name}"), ""),
                &[],
                b"pwned",
            );
            fx.assert_not_leaked(what, &r);
        }
        fx.assert_intact(&format!("{what}, then writes"));
        read_everything(&d, &id, &fx, &target);
    }
    fx.assert_intact("end");
}

#[test]
fn hard_links_to_host_files_cannot_be_written_through() {
    require_root!();
    let fx = HostFixture::create("hardlink");
    let hostname = std::fs::read("/etc/hostname").ok();
    let d = Daemon::start();
    let id = d.create(&[]);
    // Fails (a read-only bind mount, another file system); whatever it does,
    // a write through the API must not reach the host file.
    let _ = d.warren(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "ln /etc/hostname /workspace/h",
    ]);
    let _ = d.warren(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        &format!("ln {} /workspace/h2", fx.secret_path()),
    ]);
    for path in ["/workspace/h", "/workspace/h2", "/etc/hostname"] {
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "", path, ""),
            &[],
            b"pwned-hostname",
        );
        fx.assert_not_leaked(&format!("PUT {path}"), &r);
        let r = request(
            &d.socket,
            "PUT",
            &files_url(&id, "/tar", "/workspace", ""),
            &[],
            &raw_tar(&[raw_tar_entry(
                path.trim_start_matches("/workspace/"),
                tar::EntryType::Regular,
                None,
                b"pwned-hostname",
            )]),
        );
        fx.assert_not_leaked(&format!("PUT tar {path}"), &r);
    }
    assert_eq!(
        std::fs::read("/etc/hostname").ok(),
        hostname,
        "the host's /etc/hostname changed"
    );
    fx.assert_intact("hard links");
    // The query parameter cannot smuggle a second path either.
    let url = format!(
        "/v1/sandboxes/{id}/files?path={}&path={}",
        enc("/workspace/x"),
        enc(fx.secret_path())
    );
    let r = request(&d.socket, "GET", &url, &[], b"");
    fx.assert_not_leaked("duplicate path parameter", &r);
}

/// A `**/` glob far past the limit used to recurse once per token in the
/// agent (PID 1 of the sandbox) and overflow its stack. Now the daemon
/// refuses it (422 naming `glob`) and the agent refuses it too.
#[test]
fn huge_globs_and_patterns_are_refused_and_the_sandbox_survives() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    sh(
        &d,
        &id,
        "mkdir -p /workspace/g/a/b && echo hit > /workspace/g/a/b/x",
    );
    let huge = "**/".repeat(4_000) + "x";
    let find = |glob: &str| {
        request(
            &d.socket,
            "GET",
            &files_url(
                id.as_str(),
                "/find",
                "/workspace/g",
                &format!("glob={}", enc(glob)),
            ),
            &[],
            b"",
        )
    };
    let r = find(&huge);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.message().contains("glob"), "{}", r.message());
    let grep = |extra: &str| {
        request(
            &d.socket,
            "GET",
            &files_url(id.as_str(), "/grep", "/workspace/g", extra),
            &[],
            b"",
        )
    };
    let r = grep(&format!("pattern=hit&glob={}", enc(&huge)));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.message().contains("glob"), "{}", r.message());
    let r = grep(&format!("pattern={}", enc(&"a".repeat(5000))));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.message().contains("pattern"), "{}", r.message());
    // A regex that compiles to something huge is refused by its size limit.
    let r = grep(&format!("pattern={}", enc(r"(?:\w{1000}){1000}")));
    assert_eq!(r.status, 422, "{}", r.text());

    // The longest allowed glob of `**/` works and the agent is still there.
    let max = "**/".repeat(340) + "x";
    assert!(max.len() <= 1024);
    let r = find(&max);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"][0]["path"], "/workspace/g/a/b/x");
    let r = request(
        &d.socket,
        "GET",
        &files_url(id.as_str(), "", "/workspace/g/a/b/x", ""),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "the sandbox's agent died: {}", r.text());
    assert_eq!(r.body, b"hit\n");
}
