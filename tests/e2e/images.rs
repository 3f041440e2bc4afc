//! End-to-end: images built here (a busybox rootfs as an OCI layout), pushed
//! to a real local registry (`docker-registry`) with `skopeo`, pulled and
//! imported through the `warren` CLI, run in real sandboxes, and removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 8] = ["sh", "cat", "echo", "pwd", "test", "ls", "env", "id"];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why this host cannot run the test, if it cannot.
fn missing(tools: &[&str]) -> Option<String> {
    if !harness::is_root() {
        return Some("end-to-end tests need root (namespaces, overlay, cgroups)".into());
    }
    for tool in tools {
        if !have(tool) {
            return Some(format!(
                "{tool} is not installed (Debian packages docker-registry, skopeo)"
            ));
        }
    }
    let is_static = Command::new("file")
        .arg(BUSYBOX)
        .output()
        .map(|o| text(&o.stdout).contains("statically linked"))
        // Without `file`, trust that /bin/busybox is busybox-static's.
        .unwrap_or(true);
    if !Path::new(BUSYBOX).is_file() || !is_static {
        return Some(format!(
            "{BUSYBOX} is not a static busybox (Debian package busybox-static)"
        ));
    }
    None
}

macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(reason) = missing(&[$($tool),*]) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One entry of a layer.
enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, Vec<u8>),
    Symlink(String, &'a str),
}

/// An uncompressed layer tar with root-owned entries.
fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .unwrap();
            }
            Entry::File(path, mode, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .unwrap();
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// The base layer: busybox, its applets as symlinks, an empty /app and /tmp.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", 0o755, busybox),
        Entry::Dir("app", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("tmp", 0o1777),
    ];
    for applet in APPLETS {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox"));
    }
    layer_tar(&entries)
}

/// A second layer adding /app/hello.txt.
fn hello_layer() -> Vec<u8> {
    layer_tar(&[
        Entry::Dir("app", 0o755),
        Entry::File("app/hello.txt", 0o644, b"hello from layer two\n".to_vec()),
    ])
}

/// Writes a blob into an OCI layout; returns its descriptor fields.
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Writes an OCI image layout at `layout` holding one image per
/// `(tag, layers)`, each with the test's config (Env GREETING=hello,
/// WorkingDir /app, a Cmd that echoes both).
fn write_oci_layout(layout: &Path, images: &[(&str, Vec<Vec<u8>>)]) {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut manifests = Vec::new();
    for (tag, layers) in images {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            let (digest, size) = put_blob(layout, &gz.finish().unwrap());
            descriptors.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }));
        }
        let config = json!({
            "created": "2024-05-01T12:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "GREETING=hello"],
                "WorkingDir": "/app",
                "Cmd": ["sh", "-c", "echo $GREETING from $(pwd)"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (config_digest, config_size) =
            put_blob(layout, serde_json::to_vec(&config).unwrap().as_slice());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": descriptors,
        });
        let (digest, size) = put_blob(layout, serde_json::to_vec(&manifest).unwrap().as_slice());
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A directory tree as a tar file.
fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        text(&out.stderr)
    );
}

/// A `docker-registry` on 127.0.0.1 with its storage in a temp dir; killed
/// on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        Self::start_with_htpasswd(None)
    }

    /// A registry that requires basic auth against this htpasswd line.
    fn start_with_htpasswd(htpasswd: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(line) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{line}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if registry.v2_answers() {
                return registry;
            }
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer on port {}", registry.port);
    }

    fn v2_answers(&mut self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let request = "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && (answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401"))
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes an image name as one path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn image_names(d: &Daemon) -> Vec<String> {
    d.warren_json(&["image", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs a shell command in a throwaway sandbox of `image`; returns stdout.
fn run_in(d: &Daemon, image: &str, script: &str) -> String {
    let out = d.warren(&["run", "--image", image, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "run in {image} failed ({:?}): {}\ndaemon log:\n{}",
        out.status,
        text(&out.stderr),
        d.log()
    );
    text(&out.stdout)
}

struct Built {
    _dir: tempfile::TempDir,
    layout: PathBuf,
}

/// An OCI layout with `v1` (busybox layer) and `v2` (busybox + hello).
fn build_images() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    write_oci_layout(
        &layout,
        &[
            ("v1", vec![busybox_layer()]),
            ("v2", vec![busybox_layer(), hello_layer()]),
        ],
    );
    Built { _dir: dir, layout }
}

#[test]
fn pulled_image_runs_with_its_own_files_env_workdir_and_cmd_and_is_removed_safely() {
    require!("docker-registry", "skopeo");
    let built = build_images();
    let registry = Registry::start();
    let v1 = format!("{}/test/busybox:v1", registry.addr());
    let v2 = format!("{}/test/busybox:v2", registry.addr());
    let oci = built.layout.display().to_string();
    for (tag, reference) in [("v1", &v1), ("v2", &v2)] {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{oci}:{tag}"),
            &format!("docker://{reference}"),
        ]);
    }

    let d = Daemon::start();
    // Pull (stderr is not a terminal: plain progress lines).
    let out = d.warren(&["image", "pull", &v1]);
    assert!(
        out.status.success(),
        "pull failed: {}\n{}",
        text(&out.stderr),
        d.log()
    );
    assert_eq!(text(&out.stdout).trim(), v1);
    let progress = text(&out.stderr);
    assert!(progress.contains("resolved sha256:"), "{progress}");
    assert!(progress.contains("downloaded"), "{progress}");

    // ls: the built-in host image first, then ours with its config.
    let list = d.warren_json(&["image", "ls"]);
    let images = list.as_array().unwrap();
    assert_eq!(images[0]["name"], "host");
    assert_eq!(images[0]["builtin"], true);
    let ours = images.iter().find(|i| i["name"] == v1.as_str()).unwrap();
    assert_eq!(ours["builtin"], false);
    assert_eq!(ours["layers"].as_array().unwrap().len(), 1);
    assert_eq!(ours["config"]["workingDir"], "/app");
    assert!(ours["config"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("GREETING=hello")));
    assert_eq!(ours["os"], "linux");
    assert!(ours["digest"].as_str().unwrap().starts_with("sha256:"));
    let table = text(&d.warren(&["image", "ls"]).stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&v1), "{table}");

    // GET by encoded name, by plain path, by digest; 404 for unknown.
    let (status, body) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/images/{}", encode(&v1)),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_unix(&d.socket, "GET", &format!("/v1/images/{v1}"), None).unwrap();
    assert_eq!(status, 200);
    let digest = ours["digest"].as_str().unwrap();
    let inspected = d.warren_json(&["image", "inspect", digest]);
    assert_eq!(inspected["name"], v1.as_str());
    let (status, body) = http_unix(&d.socket, "GET", "/v1/images/nope%3Av9", None).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("image_not_found"), "{body}");

    // The sandbox sees the image's files, not the host's, and the image's
    // Env and WorkingDir are its defaults.
    let stdout = run_in(
        &d,
        &v1,
        "echo $GREETING; pwd; cat /etc/os-release 2>/dev/null || echo no-os-release; \
         test -x /bin/busybox && echo has-busybox; \
         test -e /usr/bin/python3 && echo has-python || echo no-python",
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["hello", "/app", "no-os-release", "has-busybox", "no-python"],
        "{stdout}"
    );
    // No command: the image's Cmd runs.
    let out = d.warren(&["run", "--image", &v1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from /app\n");

    // In use: 409 naming the sandbox, through the CLI and the API.
    let id = d.create(&["--image", &v1]);
    let out = d.warren(&["image", "rm", &v1]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&id) && err.contains("image_in_use"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (status, body) = http_unix(
        &d.socket,
        "DELETE",
        &format!("/v1/images/{}", encode(&v1)),
        None,
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(&id), "{body}");
    // The built-in image cannot be removed.
    let (status, _) = http_unix(&d.socket, "DELETE", "/v1/images/host", None).unwrap();
    assert_eq!(status, 422);
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // v2 shares v1's layer: the pull finds it stored.
    let out = d.warren(&["image", "pull", &v2]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already stored"),
        "{}",
        text(&out.stderr)
    );

    // Removing v1 keeps the shared layer for v2, which still runs.
    let removed = d.warren_json(&["image", "rm", &v1]);
    assert_eq!(removed["layersRemoved"], 0, "{removed}");
    assert!(!image_names(&d).contains(&v1));
    let stdout = run_in(
        &d,
        &v2,
        "cat /app/hello.txt; test -x /bin/busybox && echo ok",
    );
    assert_eq!(stdout, "hello from layer two\nok\n");

    // Removing v2 frees both layers (busybox alone is ~2 MB).
    let removed = d.warren_json(&["image", "rm", &v2]);
    assert_eq!(removed["layersRemoved"], 2, "{removed}");
    assert!(
        removed["bytesFreed"].as_u64().unwrap() > 1_000_000,
        "{removed}"
    );
    assert_eq!(image_names(&d), ["host"]);
    let out = d.warren(&["image", "rm", &v2]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("image_not_found"));
}

#[test]
fn archives_import_and_garbage_is_refused_in_one_line() {
    require!("skopeo");
    let built = build_images();
    let work = tempfile::tempdir().unwrap();
    let d = Daemon::start();

    // An OCI layout tarball (one image in it).
    let single = work.path().join("single");
    write_oci_layout(&single, &[("v1", vec![busybox_layer()])]);
    let oci_tar = work.path().join("oci.tar");
    tar_dir(&single, &oci_tar);
    let out = d.warren(&[
        "--json",
        "image",
        "import",
        oci_tar.to_str().unwrap(),
        "--name",
        "local/oci:v1",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let image: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["name"], "local/oci:v1");
    assert_eq!(image["config"]["workingDir"], "/app");

    // A docker-archive (`docker save` format) of v2.
    let docker_tar = work.path().join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v2", built.layout.display()),
        &format!("docker-archive:{}:local/busybox:v2", docker_tar.display()),
    ]);
    let out = d.warren(&[
        "image",
        "import",
        docker_tar.to_str().unwrap(),
        "--name",
        "local/docker:v2",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    assert_eq!(text(&out.stdout).trim(), "local/docker:v2");
    let stdout = run_in(&d, "local/docker:v2", "echo $GREETING; pwd; cat hello.txt");
    assert_eq!(stdout, "hello\n/app\nhello from layer two\n");
    let names = image_names(&d);
    assert!(names.contains(&"local/oci:v1".to_owned()), "{names:?}");

    // Garbage: 422, one line, nothing stored.
    let garbage = work.path().join("garbage.tar");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&garbage, bytes).unwrap();
    let out = d.warren(&[
        "image",
        "import",
        garbage.to_str().unwrap(),
        "--name",
        "junk:v1",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("HTTP 422"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!image_names(&d).contains(&"junk:v1".to_owned()));
    // A missing name is refused before any upload.
    let (status, body) = http_unix(&d.socket, "POST", "/v1/images/import", None).unwrap();
    assert_eq!(status, 400, "{body}");
}

/// A bcrypt htpasswd line for `user:password`, if this host can make one
/// (docker-registry accepts only bcrypt).
fn bcrypt_htpasswd(user: &str, password: &str) -> Option<String> {
    let script = format!(
        "import crypt; print(crypt.crypt({password:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-W", "ignore", "-c", &script])
        .output()
        .ok()?;
    let hash = text(&out.stdout).trim().to_owned();
    (out.status.success() && hash.starts_with("$2")).then(|| format!("{user}:{hash}"))
}

/// `warren image pull` with `input` on its standard input.
fn pull_with_stdin(d: &Daemon, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(harness::warren_bin())
        .arg("--socket")
        .arg(&d.socket)
        .arg("--no-autostart")
        .args(["image", "pull"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn registry_credentials_come_from_stdin_and_refusals_are_403() {
    require!("docker-registry", "skopeo");
    let password = "pw-7f3a9c-not-in-logs";
    let Some(htpasswd) = bcrypt_htpasswd("bob", password) else {
        eprintln!("skipped: cannot make a bcrypt password hash (needs python3 with crypt)");
        return;
    };
    let built = build_images();
    let registry = Registry::start_with_htpasswd(Some(&htpasswd));
    let reference = format!("{}/private/busybox:v1", registry.addr());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("--dest-creds=bob:{password}"),
        &format!("oci:{}:v1", built.layout.display()),
        &format!("docker://{reference}"),
    ]);
    let d = Daemon::start();

    // No credentials, then wrong ones: 403, one line.
    let out = d.warren(&["image", "pull", &reference]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("registry_unauthorized") && err.contains("HTTP 403"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = pull_with_stdin(
        &d,
        &[&reference, "--username", "bob", "--password-stdin"],
        "wrong\n",
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("registry_unauthorized"));

    // The right ones, from stdin.
    let out = pull_with_stdin(
        &d,
        &[&reference, "--username", "bob", "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    assert_eq!(text(&out.stdout).trim(), reference);
    assert!(image_names(&d).contains(&reference));
    assert!(
        !d.log().contains(password),
        "the daemon logged the password"
    );
}

/// Unpacked layer directories in the store (not their `.diffid` markers).
fn layer_dir_count(d: &Daemon) -> usize {
    std::fs::read_dir(d.data_dir().join("images/l"))
        .map(|entries| {
            entries
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
                .count()
        })
        .unwrap_or(0)
}

/// Replacing (re-importing) an image that a running sandbox was created from
/// must not pull its layers out from under it: the old layer stays while
/// the sandbox lives and is freed when the sandbox is deleted.
#[test]
fn replacing_an_image_keeps_the_layers_a_sandbox_runs_on() {
    require!();
    let work = tempfile::tempdir().unwrap();
    let old = work.path().join("old");
    write_oci_layout(&old, &[("v1", vec![busybox_layer(), hello_layer()])]);
    let old_tar = work.path().join("old.tar");
    tar_dir(&old, &old_tar);
    let new = work.path().join("new");
    write_oci_layout(&new, &[("v1", vec![busybox_layer()])]);
    let new_tar = work.path().join("new.tar");
    tar_dir(&new, &new_tar);

    let d = Daemon::start();
    let import = |tar: &Path| {
        let out = d.warren(&[
            "image",
            "import",
            tar.to_str().unwrap(),
            "--name",
            "local/app:latest",
        ]);
        assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    };
    import(&old_tar);
    let id = d.create(&["--image", "local/app:latest"]);
    assert_eq!(layer_dir_count(&d), 2);

    // The name now points at an image without the hello layer.
    import(&new_tar);
    let inspect = d.warren_json(&["image", "inspect", "local/app:latest"]);
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 1, "{inspect}");
    assert_eq!(layer_dir_count(&d), 2, "the sandbox's layer was removed");

    // The sandbox still reads the file of the replaced layer (first access).
    let out = d.warren(&["exec", &id, "--", "cat", "/app/hello.txt"]);
    assert_eq!(text(&out.stdout), "hello from layer two\n", "{out:?}");

    // Deleting the sandbox frees the layer nothing uses any more.
    let out = d.warren(&["rm", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(layer_dir_count(&d), 1);
    let out = d.warren(&["run", "--image", "local/app:latest", "--", "ls", "/app"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "", "new image has an empty /app");
}

/// An image whose /.warren, /proc, /dev, /sys and /tmp are symlinks to host
/// paths cannot make sandbox setup (which runs before pivot_root, when the
/// host's root is still reachable) create files or mount anything there:
/// Warren's own mount points sit above the image's layers.
#[test]
fn image_symlinks_cannot_redirect_sandbox_setup_to_the_host() {
    require!();
    let host = tempfile::Builder::new()
        .prefix("warren-evil-")
        .tempdir_in("/tmp")
        .unwrap();
    // World-writable, so only the path resolution can protect it.
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    for sub in ["w", "p", "d", "s", "t"] {
        let dir = host.path().join(sub);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
    }
    let at = |sub: &str| host.path().join(sub).to_string_lossy().into_owned();
    let (w, p, d, s, t) = (at("w"), at("p"), at("d"), at("s"), at("t"));
    let evil = layer_tar(&[
        Entry::Symlink(".warren".into(), &w),
        Entry::Symlink("proc".into(), &p),
        Entry::Symlink("dev".into(), &d),
        Entry::Symlink("sys".into(), &s),
        Entry::Symlink("tmp".into(), &t),
    ]);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    write_oci_layout(&layout, &[("v1", vec![busybox_layer(), evil])]);
    let tar = work.path().join("evil.tar");
    tar_dir(&layout, &tar);

    let d = Daemon::start();
    let out = d.warren(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "--name",
        "local/evil:v1",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let out = d.warren(&[
        "run",
        "--image",
        "local/evil:v1",
        "--",
        "sh",
        "-c",
        "test -d /proc/self && test -c /dev/null && test -f /.warren/agent && echo inside",
    ]);
    assert_eq!(text(&out.stdout).trim(), "inside", "{out:?}\n{}", d.log());
    for sub in ["w", "p", "d", "s", "t"] {
        let entries: Vec<_> = std::fs::read_dir(host.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            entries.is_empty(),
            "sandbox setup wrote into host {sub}: {entries:?}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(host.path().to_str().unwrap()),
        "something was mounted on the host path"
    );
}
