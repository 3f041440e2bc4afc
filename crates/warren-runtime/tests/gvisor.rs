#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of the gVisor driver: real `runsc` containers, real
//! overlay mounts, real checkpoint/restore. They skip (with a printed reason)
//! when not root or when `runsc` is missing or cannot run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;
use warren_runtime::{
    ByteStream, Driver, ExecSpec, GvisorConfig, GvisorDriver, ProcessEvent, RuntimeInfo,
    SandboxSpec, SpawnSpec, WriteSpec,
};

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for runsc and overlay mounts".into());
    }
    warren_runtime::runsc_version(Path::new("runsc"))
        .err()
        .map(|e| format!("runsc cannot run: {e}"))
}

macro_rules! require_runsc {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// One driver on a private data dir; destroys its sandboxes on drop.
struct Harness {
    driver: GvisorDriver,
    data: TempDir,
    live: Mutex<Vec<(String, Option<RuntimeInfo>)>>,
}

impl Harness {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let driver = GvisorDriver::new(GvisorConfig::new(data.path())).unwrap();
        Self {
            driver,
            data,
            live: Mutex::default(),
        }
    }

    fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            image: "host".into(),
            cpus: 1.0,
            memory_bytes: 512 << 20,
            pids_limit: 256,
            workdir: "/workspace".into(),
            ..Default::default()
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> RuntimeInfo {
        self.live.lock().unwrap().push((spec.id.clone(), None));
        let info = self.driver.create(spec).await.unwrap();
        self.live
            .lock()
            .unwrap()
            .push((spec.id.clone(), Some(info.clone())));
        info
    }

    async fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        let out = self
            .driver
            .exec(
                id,
                ExecSpec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data.path().join("sandboxes").join(id)
    }

    fn runsc_ids(&self) -> String {
        let out = std::process::Command::new("runsc")
            .arg("--root")
            .arg(self.data.path().join("runsc"))
            .arg("list")
            .arg("-q")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        let driver = &self.driver;
        // A fresh runtime on its own thread: drop may run inside the test's.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for (id, info) in live.into_iter().rev() {
                    let _ = rt.block_on(driver.destroy(&id, info.as_ref()));
                }
            });
        });
    }
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&path.display().to_string())
}

async fn read_all(h: &Harness, id: &str, path: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let files = h.driver.files().unwrap();
    let (_, mut stream) = files.read(id, path, 0, None).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_sandbox_runs_commands_and_is_removed() {
    require_runsc!();
    let h = Harness::new();
    let info = h.create(&h.spec("gvbasic1")).await;
    assert!(info.pid > 1);
    assert!(h.driver.is_alive("gvbasic1", &info));

    // Inside gVisor: its own kernel (dmesg says so), our hostname, PID 1 agent.
    let (code, out, err) = h
        .sh(
            "gvbasic1",
            "hostname; pwd; id -u; cat /proc/1/cmdline | tr '\\0' ' '",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "gvbasic1");
    assert_eq!(lines[1], "/workspace");
    assert_eq!(lines[2], "0");
    assert!(lines[3].contains("init"), "{out}");
    let (_, out, _) = h
        .sh("gvbasic1", "dmesg 2>/dev/null | head -1; uname -r")
        .await;
    assert!(
        out.contains("gVisor") || out.contains("4.4.0"),
        "not gVisor: {out}"
    );

    // System dirs are read-only, the host's private files and Warren's data
    // dir are not visible, /etc/shadow is hidden, no network.
    let (_, out, _) = h
        .sh(
            "gvbasic1",
            "touch /usr/x 2>/dev/null && echo writable || echo ro; \
             cat /etc/shadow | wc -c; ls /sys/class/net 2>/dev/null | grep -vc '^lo$'; \
             ls -A /root | wc -l",
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ro", "{out}");
    assert_eq!(lines[1].trim(), "0", "{out}");
    assert_eq!(lines[2].trim(), "0", "network interfaces: {out}");
    assert_eq!(lines[3].trim(), "0", "{out}");
    let data = h.data.path().display().to_string();
    let (_, out, _) = h.sh("gvbasic1", &format!("ls {data} 2>&1 || true")).await;
    assert!(!out.contains("sandboxes"), "data dir visible: {out}");

    // Files written inside land in the upper dir on the host.
    let (code, _, err) = h.sh("gvbasic1", "echo persisted > /workspace/f.txt").await;
    assert_eq!(code, 0, "{err}");
    let upper = h.sandbox_dir("gvbasic1").join("upper/workspace/f.txt");
    assert_eq!(std::fs::read_to_string(&upper).unwrap(), "persisted\n");

    // The agent socket dir is root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.sandbox_dir("gvbasic1").join("sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // The OCI resources reach the sandbox's cgroup (v1 memory hierarchy on
    // this kind of host; v2-only hosts name it differently).
    let memcg = Path::new("/sys/fs/cgroup/memory/warren-gvisor/gvbasic1");
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        let limit = std::fs::read_to_string(memcg.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (512u64 << 20).to_string());
    }

    let rootfs = h.sandbox_dir("gvbasic1").join("rootfs");
    assert!(mounted(&rootfs));
    h.driver.destroy("gvbasic1", Some(&info)).await.unwrap();
    assert!(!h.driver.is_alive("gvbasic1", &info));
    assert!(!mounted(&rootfs));
    assert!(!h.sandbox_dir("gvbasic1").exists());
    assert!(!h.runsc_ids().contains("gvbasic1"));
    assert!(!memcg.exists(), "the sandbox's cgroup is left behind");
    // Idempotent.
    h.driver.destroy("gvbasic1", Some(&info)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_files_and_processes_work_through_the_agent() {
    require_runsc!();
    let h = Harness::new();
    h.create(&h.spec("gvfiles1")).await;
    let files = h.driver.files().unwrap();
    let body: ByteStream = Box::pin(std::io::Cursor::new(b"hello gvisor".to_vec()));
    files
        .write(
            "gvfiles1",
            WriteSpec {
                path: "/workspace/in.txt".into(),
                ..Default::default()
            },
            body,
        )
        .await
        .unwrap();
    let (_, out, _) = h.sh("gvfiles1", "cat /workspace/in.txt").await;
    assert_eq!(out, "hello gvisor");
    assert_eq!(
        read_all(&h, "gvfiles1", "/workspace/in.txt").await,
        b"hello gvisor"
    );

    let procs = h.driver.processes().unwrap();
    let p = procs
        .spawn(
            "gvfiles1",
            SpawnSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo out-$((6*7))".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut rx = procs
        .subscribe_output("gvfiles1", p.pid, 0, true)
        .await
        .unwrap();
    let mut output = Vec::new();
    let mut exit = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
    {
        match ev {
            ProcessEvent::Output { data, .. } => output.extend(data),
            ProcessEvent::Exited { exit_code, .. } => exit = Some(exit_code),
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&output), "out-42\n");
    assert_eq!(exit, Some(0));
}

/// Waits until `script` prints something that parses as a number.
async fn number(h: &Harness, id: &str, script: &str) -> u64 {
    for _ in 0..600 {
        let (_, out, _) = h.sh(id, script).await;
        if let Ok(n) = out.trim().parse() {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{script} never printed a number");
}

/// The python process's variable, written again after we remove its file
/// (so only a running process with the value in memory can answer).
async fn fresh_secret(h: &Harness, id: &str) -> u64 {
    let (code, _, err) = h.sh(id, "rm -f /workspace/secret.now").await;
    assert_eq!(code, 0, "{err}");
    number(h, id, "cat /workspace/secret.now 2>/dev/null").await
}

const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /workspace/count; sleep 0.05; done";
const PYTHON: &str = "
import os, time
secret = int.from_bytes(os.urandom(4), 'big')
open('/workspace/secret.start', 'w').write(str(secret))
while True:
    open('/workspace/secret.now.tmp', 'w').write(str(secret))
    os.rename('/workspace/secret.now.tmp', '/workspace/secret.now')
    time.sleep(0.05)
";

async fn spawn_bg(h: &Harness, id: &str, argv: &[&str]) {
    h.driver
        .processes()
        .unwrap()
        .spawn(
            id,
            SpawnSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_suspend_keeps_memory() {
    require_runsc!();
    let h = Harness::new();
    let spec = h.spec("gvsusp1");
    let info = h.create(&spec).await;
    spawn_bg(&h, "gvsusp1", &["/bin/sh", "-c", COUNTER]).await;
    spawn_bg(&h, "gvsusp1", &["python3", "-c", PYTHON]).await;
    let before = number(&h, "gvsusp1", "cat /workspace/count").await;
    let secret = number(&h, "gvsusp1", "cat /workspace/secret.start").await;

    // Paused first (runsc pause): suspend works from there too.
    h.driver.pausable().unwrap().pause("gvsusp1").await.unwrap();
    let suspending = h.driver.suspending().unwrap();
    assert!(suspending.preserves_memory());
    suspending.suspend("gvsusp1", &info).await.unwrap();
    assert!(
        !h.driver.is_alive("gvsusp1", &info),
        "the sandbox process must be gone"
    );
    assert!(!h.runsc_ids().contains("gvsusp1"));
    // The shell may have been checkpointed between truncating the file and
    // writing it (then the value before is the bound).
    let at_suspend: u64 =
        std::fs::read_to_string(h.sandbox_dir("gvsusp1").join("upper/workspace/count"))
            .unwrap()
            .trim()
            .parse()
            .unwrap_or(before);
    assert!(at_suspend >= before);
    let resumed = suspending.resume_suspended(&spec).await.unwrap();
    h.live
        .lock()
        .unwrap()
        .push(("gvsusp1".into(), Some(resumed.clone())));
    assert!(h.driver.is_alive("gvsusp1", &resumed));
    // The counter continues from where it was, not from 1.
    let after = number(&h, "gvsusp1", "cat /workspace/count").await;
    assert!(
        after >= at_suspend,
        "counter restarted: {after} < {at_suspend}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = number(&h, "gvsusp1", "cat /workspace/count").await;
    assert!(later > after, "counter is not running after resume");
    // The python process still has its variable (only in its memory): it
    // writes the file again after we remove it.
    let out = fresh_secret(&h, "gvsusp1").await;
    assert_eq!(out, secret);

    h.driver.destroy("gvsusp1", Some(&resumed)).await.unwrap();
    assert!(!h.sandbox_dir("gvsusp1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_fork_with_memory_copies_processes() {
    require_runsc!();
    let h = Harness::new();
    let info = h.create(&h.spec("gvparent1")).await;
    spawn_bg(&h, "gvparent1", &["python3", "-c", PYTHON]).await;
    let secret = number(&h, "gvparent1", "cat /workspace/secret.start").await;

    // The children's files: the parent's captured as a layer (paused).
    let layer = h.data.path().join("layer1");
    h.driver
        .snapshots()
        .unwrap()
        .capture_layer("gvparent1", &layer, false)
        .await
        .unwrap();
    assert!(layer.join("workspace/secret.start").exists());
    let mut children = Vec::new();
    for i in 0..2 {
        let mut spec = h.spec(&format!("gvchild{i}"));
        spec.snapshot_layers = vec![layer.clone()];
        h.live.lock().unwrap().push((spec.id.clone(), None));
        children.push(spec);
    }
    let infos = h
        .driver
        .memory_forking()
        .unwrap()
        .fork_with_memory("gvparent1", &info, &children)
        .await
        .unwrap();
    assert_eq!(infos.len(), 2);
    for (spec, child) in children.iter().zip(&infos) {
        h.live
            .lock()
            .unwrap()
            .push((spec.id.clone(), Some(child.clone())));
        // Each child's python process has the parent's variable and runs.
        let out = fresh_secret(&h, &spec.id).await;
        assert_eq!(out, secret, "{}", spec.id);
    }
    // The parent keeps running.
    let out = fresh_secret(&h, "gvparent1").await;
    assert_eq!(out, secret);
    // A child's file changes stay its own.
    h.sh("gvchild0", "echo mine > /workspace/own").await;
    let (_, out, _) = h.sh("gvchild1", "cat /workspace/own 2>&1 || true").await;
    assert!(out.contains("No such file"), "{out}");
    for (spec, child) in children.iter().zip(&infos) {
        h.driver.destroy(&spec.id, Some(child)).await.unwrap();
        assert!(!h.sandbox_dir(&spec.id).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_failed_create_leaves_nothing_behind() {
    require_runsc!();
    let h = Harness::new();
    let mut spec = h.spec("gvfail1");
    spec.snapshot_layers = vec![h.data.path().join("no-such-layer")];
    let err = h.driver.create(&spec).await.unwrap_err();
    match &err {
        warren_runtime::DriverError::Create { step, .. } => assert_eq!(step, "overlay mount"),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!h.sandbox_dir("gvfail1").exists());
    assert!(!h.runsc_ids().contains("gvfail1"));
    // Destroying what a failed create left is fine, and idempotent.
    h.driver.destroy("gvfail1", None).await.unwrap();
    h.driver.destroy("gvfail1", None).await.unwrap();
}

/// The socket directory is writable by the sandbox's root: a `quiesced`
/// symlink to a host secret (or a FIFO) must not be read, and a planted
/// `agent.sock` symlink to another socket must not be connected through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_sock_dir_plants_are_not_followed() {
    require_runsc!();
    let h = Harness::new();
    let spec = h.spec("gvplant1");
    let info = h.create(&spec).await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("shadow");
    std::fs::write(&secret, "root:TOPSECRET-HASH-4242:19000::::::\n").unwrap();

    // The agent cannot write its verdict (its temporary name is taken), and
    // a sandbox process keeps planting `quiesced -> host secret`.
    let (code, _, err) = h.sh("gvplant1", "mkdir /.warren/sock/.quiesced.tmp").await;
    assert_eq!(code, 0, "{err}");
    let planter = format!(
        "while [ ! -e /tmp/stop ]; do ln -s {} /.warren/sock/quiesced 2>/dev/null; sleep 0.01; done",
        secret.display()
    );
    spawn_bg(&h, "gvplant1", &["/bin/sh", "-c", &planter]).await;
    let suspending = h.driver.suspending().unwrap();
    let e = suspending.suspend("gvplant1", &info).await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("TOPSECRET"), "secret leaked: {text}");
    assert!(text.contains("symlink"), "{text}");
    // Nothing was stopped: the sandbox still runs commands.
    assert!(h.driver.is_alive("gvplant1", &info));
    let (code, out, _) = h.sh("gvplant1", "echo alive").await;
    assert_eq!((code, out.trim()), (0, "alive"));

    // A FIFO instead: refused without blocking.
    let (code, _, err) = h
        .sh(
            "gvplant1",
            "touch /tmp/stop; sleep 0.2; rm -f /tmp/stop /.warren/sock/quiesced",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    spawn_bg(
        &h,
        "gvplant1",
        &[
            "/bin/sh",
            "-c",
            "while true; do mkfifo /.warren/sock/quiesced 2>/dev/null; sleep 0.01; done",
        ],
    )
    .await;
    let e = tokio::time::timeout(
        Duration::from_secs(120),
        suspending.suspend("gvplant1", &info),
    )
    .await
    .expect("suspend blocked on a FIFO")
    .unwrap_err();
    // gVisor may keep the FIFO inside its own kernel (then the host sees
    // nothing and the agent's missing verdict times out): either way the
    // suspend fails without blocking.
    assert!(
        e.to_string().contains("not a regular file") || e.to_string().contains("within 15 s"),
        "{e}"
    );
    let (code, out, _) = h.sh("gvplant1", "echo alive").await;
    assert_eq!((code, out.trim()), (0, "alive"));

    // `agent.sock` replaced by a symlink to another socket on the host.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    listener.set_nonblocking(true).unwrap();
    let planted = h.sandbox_dir("gvplant1").join("sock/planted.sock");
    let (code, _, err) = h
        .sh(
            "gvplant1",
            &format!("ln -s {} /.warren/sock/planted.sock", other.display()),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_symlink());
    let fake = RuntimeInfo {
        agent_socket: planted,
        ..info.clone()
    };
    let e = h.driver.adopt("gvplant1", &fake).await.unwrap_err();
    assert!(
        e.to_string().contains("not a unix socket") || e.to_string().contains("symbolic"),
        "{e}"
    );
    assert!(
        listener.accept().is_err(),
        "the daemon connected through the planted symlink"
    );
    // The real socket still works.
    h.driver.adopt("gvplant1", &info).await.unwrap();
}

/// A unix socket bound by a sandbox process is a host socket gVisor cannot
/// checkpoint: the suspend is refused before anything is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_suspend_refuses_bound_unix_sockets() {
    require_runsc!();
    let h = Harness::new();
    let spec = h.spec("gvuds1");
    let info = h.create(&spec).await;
    spawn_bg(
        &h,
        "gvuds1",
        &[
            "python3",
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind('/tmp/app.sock')\n\
             s.listen(1)\n\
             time.sleep(3600)\n",
        ],
    )
    .await;
    number(&h, "gvuds1", "test -S /tmp/app.sock && echo 1").await;
    let e = h
        .driver
        .suspending()
        .unwrap()
        .suspend("gvuds1", &info)
        .await
        .unwrap_err();
    assert!(
        matches!(e, warren_runtime::DriverError::Conflict(_)),
        "{e:?}"
    );
    assert!(e.to_string().contains("/tmp/app.sock"), "{e}");
    assert!(h.driver.is_alive("gvuds1", &info));
    let (code, out, _) = h.sh("gvuds1", "echo alive").await;
    assert_eq!((code, out.trim()), (0, "alive"));
}

/// `diskMb` is refused: the gVisor driver does not bound disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_refuses_disk_limits() {
    require_runsc!();
    let h = Harness::new();
    let spec = SandboxSpec {
        disk_mb: Some(100),
        ..h.spec("gvdisk1")
    };
    let e = h.driver.create(&spec).await.unwrap_err();
    assert!(
        matches!(e, warren_runtime::DriverError::Invalid(_)),
        "{e:?}"
    );
    assert!(!h.sandbox_dir("gvdisk1").exists());
}
