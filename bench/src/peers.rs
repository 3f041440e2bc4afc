//! The systems Warren is compared with. Each peer is set up once (untimed),
//! then `round` runs `true` in a fresh sandbox/container and tears it down.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Where a peer stands.
pub enum PeerState {
    Ready(Box<dyn Peer>),
    Missing(String),
    Failed(String),
}

impl PeerState {
    /// "ok", "missing: …" or "failed: …".
    pub fn status(&self) -> String {
        match self {
            PeerState::Ready(_) => "ok".into(),
            PeerState::Missing(why) => format!("missing: {why}"),
            PeerState::Failed(why) => format!("failed: {why}"),
        }
    }
}

pub trait Peer {
    /// One timed round: start `true` in a fresh sandbox and wait for it.
    fn round(&mut self, id: &str) -> Result<()>;
    /// Untimed cleanup after each round.
    fn after_round(&mut self, _id: &str) {}
}

/// Finds `name` on PATH (plus the sbin directories root usually has).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// The first line of a tool's `--version`, if it runs.
pub fn version(name: &str) -> Option<String> {
    let bin = which(name)?;
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_string())
}

fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{}", first_error_line(&out));
    }
    Ok(out)
}

/// The first non-empty line of stderr (or stdout), or the exit status.
pub fn first_error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let std = String::from_utf8_lossy(&out.stdout);
    err.lines()
        .chain(std.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("exited with {}", out.status))
}

/// Runs the first (untimed) probe round; a failure marks the peer failed.
fn probe(mut peer: Box<dyn Peer>) -> PeerState {
    let id = format!("probe-{}", std::process::id());
    let r = peer.round(&id);
    peer.after_round(&id);
    match r {
        Ok(()) => PeerState::Ready(peer),
        Err(e) => PeerState::Failed(first_line(&e.to_string())),
    }
}

pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

// ---------------------------------------------------------------- bwrap

pub struct Bwrap {
    bin: PathBuf,
}

impl Peer for Bwrap {
    fn round(&mut self, _id: &str) -> Result<()> {
        run_ok(Command::new(&self.bin).args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "true",
        ]))?;
        Ok(())
    }
}

pub fn bwrap() -> PeerState {
    match which("bwrap") {
        None => PeerState::Missing("bwrap not installed (apt: bubblewrap)".into()),
        Some(bin) => probe(Box::new(Bwrap { bin })),
    }
}

// ---------------------------------------------------------------- OCI bundle

/// An OCI bundle whose rootfs is an empty directory with the host's `/usr`
/// and `/etc` bind-mounted read-only (and `/bin` etc. as the same symlinks).
pub struct Bundle {
    dir: PathBuf,
    base: Value,
    cgroup_parent: String,
}

impl Bundle {
    pub fn create(runc: &Path, dir: &Path, cgroup_parent: &str) -> Result<Bundle> {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs)?;
        run_ok(Command::new(runc).arg("spec").arg("--bundle").arg(dir)).context("runc spec")?;
        let mut config: Value = serde_json::from_slice(&fs::read(dir.join("config.json"))?)?;
        let mut mounts = Vec::new();
        for name in [
            "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
        ] {
            let host = Path::new("/").join(name);
            let target = rootfs.join(name);
            if let Ok(link) = fs::read_link(&host) {
                std::os::unix::fs::symlink(link, &target)?;
            } else if host.is_dir() {
                fs::create_dir_all(&target)?;
                mounts.push(json!({
                    "destination": format!("/{name}"),
                    "type": "bind",
                    "source": host,
                    "options": ["rbind", "ro"],
                }));
            }
        }
        config["process"]["args"] = json!(["true"]);
        config["process"]["terminal"] = json!(false);
        config["root"] = json!({ "path": rootfs, "readonly": true });
        config["mounts"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("runc spec wrote no mounts array"))?
            .extend(mounts);
        Ok(Bundle {
            dir: dir.to_path_buf(),
            base: config,
            cgroup_parent: cgroup_parent.to_string(),
        })
    }

    /// Writes config.json with a per-container cgroup under our parent.
    fn prepare(&self, id: &str, sub: &str) -> Result<()> {
        let mut config = self.base.clone();
        config["linux"]["cgroupsPath"] = json!(format!("/{}/{sub}-{id}", self.cgroup_parent));
        fs::write(self.dir.join("config.json"), serde_json::to_vec(&config)?)?;
        Ok(())
    }
}

/// An OCI runtime (`runc`, or `runsc` for gVisor) running `true` from a bundle
/// over the same rootfs, one fresh container id per round.
pub struct OciRuntime {
    bin: PathBuf,
    /// Global flags before the subcommand (`--root DIR`, `--network=none`, …).
    global_args: Vec<String>,
    bundle: Bundle,
    /// Prefix of this runtime's per-round cgroup path in the bundle.
    name: &'static str,
    /// The runtime's spelling of "force" for `delete`.
    delete_force: &'static str,
}

impl Peer for OciRuntime {
    fn round(&mut self, id: &str) -> Result<()> {
        self.bundle.prepare(id, self.name)?;
        run_ok(
            Command::new(&self.bin)
                .args(&self.global_args)
                .arg("run")
                .arg("--bundle")
                .arg(&self.bundle.dir)
                .arg(format!("wb-{id}")),
        )?;
        Ok(())
    }

    fn after_round(&mut self, id: &str) {
        let _ = Command::new(&self.bin)
            .args(&self.global_args)
            .args(["delete", self.delete_force, &format!("wb-{id}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn root_arg(state: &Path) -> Vec<String> {
    vec!["--root".to_string(), state.display().to_string()]
}

pub fn runc(tmp: &Path, cgroup_parent: &str) -> PeerState {
    let Some(bin) = which("runc") else {
        return PeerState::Missing("runc not installed (apt: runc)".into());
    };
    let setup = || -> Result<OciRuntime> {
        let dir = tmp.join("runc");
        let bundle = Bundle::create(&bin, &dir.join("bundle"), cgroup_parent)?;
        Ok(OciRuntime {
            bin: bin.clone(),
            global_args: root_arg(&dir.join("state")),
            bundle,
            name: "runc",
            delete_force: "-f",
        })
    };
    match setup() {
        Ok(p) => probe(Box::new(p)),
        Err(e) => PeerState::Failed(first_line(&format!("{e:#}"))),
    }
}

/// `runsc run` (gVisor) of the same kind of bundle.
pub fn runsc(tmp: &Path, cgroup_parent: &str) -> PeerState {
    let Some(bin) = which("runsc") else {
        return PeerState::Missing("runsc not installed (apt: runsc)".into());
    };
    // `runsc spec`-style bundles come from runc; without runc, use our own spec.
    let Some(runc_bin) = which("runc") else {
        return PeerState::Missing("runsc bundle needs `runc spec` (apt: runc)".into());
    };
    let mut last = String::new();
    // Plain first; then without cgroups (some hosts refuse runsc's cgroup setup).
    for extra in [vec![], vec!["--ignore-cgroups".to_string()]] {
        let setup = || -> Result<OciRuntime> {
            let dir = tmp.join(format!("runsc{}", extra.len()));
            let bundle = Bundle::create(&runc_bin, &dir.join("bundle"), cgroup_parent)?;
            let mut global_args = root_arg(&dir.join("state"));
            global_args.push("--network=none".to_string());
            global_args.extend(extra.iter().cloned());
            Ok(OciRuntime {
                bin: bin.clone(),
                global_args,
                bundle,
                name: "runsc",
                delete_force: "-force",
            })
        };
        match setup() {
            Ok(p) => match probe(Box::new(p)) {
                PeerState::Ready(p) => return PeerState::Ready(p),
                other => last = other.status(),
            },
            Err(e) => last = format!("failed: {}", first_line(&format!("{e:#}"))),
        }
    }
    PeerState::Failed(last.trim_start_matches("failed: ").to_string())
}

// ---------------------------------------------------------------- podman

/// `podman --runtime runc run --rm --network none` of an imported tiny rootfs
/// (`/usr/bin/true` and its libraries), with private storage in the temp dir.
pub struct Podman {
    bin: PathBuf,
    base_args: Vec<String>,
    run_args: Vec<String>,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(&self.base_args);
        c
    }
}

impl Peer for Podman {
    fn round(&mut self, _id: &str) -> Result<()> {
        run_ok(self.cmd().args(&self.run_args))?;
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Unmounts and removes the private storage's layers.
        let _ = self
            .cmd()
            .args(["system", "reset", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn tiny_rootfs_tar(dir: &Path, bins: &[&str]) -> Result<PathBuf> {
    let fsdir = dir.join("rootfs");
    let mut files = Vec::new();
    for bin in bins {
        let bin = Path::new(bin);
        files.push(bin.to_path_buf());
        let ldd = run_ok(Command::new("ldd").arg(bin))
            .with_context(|| format!("ldd {}", bin.display()))?;
        for tok in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if tok.starts_with('/') && !files.iter().any(|f| f == Path::new(tok)) {
                files.push(PathBuf::from(tok));
            }
        }
    }
    for f in &files {
        let rel = f.strip_prefix("/")?;
        let dst = fsdir.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        // Follow symlinks: the image gets real files at the paths ldd names.
        fs::copy(f, &dst).with_context(|| format!("copy {}", f.display()))?;
    }
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&fsdir)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )
    .context("tar")?;
    Ok(tar)
}

pub fn podman(tmp: &Path, cgroup_parent: &str) -> PeerState {
    let Some(bin) = which("podman") else {
        return PeerState::Missing("podman not installed (apt: podman)".into());
    };
    if which("runc").is_none() {
        return PeerState::Missing("podman --runtime runc needs runc (apt: runc)".into());
    }
    let setup = || -> Result<Podman> {
        let dir = tmp.join("podman");
        fs::create_dir_all(&dir)?;
        let tar = tiny_rootfs_tar(&dir, &["/usr/bin/true"])?;
        let base_args: Vec<String> = vec![
            "--root".into(),
            dir.join("storage").to_string_lossy().into(),
            "--runroot".into(),
            dir.join("run").to_string_lossy().into(),
            "--tmpdir".into(),
            dir.join("tmp").to_string_lossy().into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ];
        let image = "localhost/warren-bench-true:latest".to_string();
        let mut run_args: Vec<String> = vec![
            "--runtime".into(),
            "runc".into(),
            "run".into(),
            "--rm".into(),
            "--network".into(),
            "none".into(),
            "--cgroup-parent".into(),
            format!("/{cgroup_parent}/podman"),
        ];
        // podman's default rlimits (nofile 1048576, nproc = ours) fail with
        // EPERM on many hosts; 1024 is runc's spec default and below any hard limit.
        for l in ["nofile=1024:1024", "nproc=1024:1024"] {
            run_args.push("--ulimit".into());
            run_args.push(l.into());
        }
        run_args.push(image.clone());
        run_args.push("/usr/bin/true".into());
        let p = Podman {
            bin: bin.clone(),
            base_args,
            run_args,
        };
        run_ok(p.cmd().arg("import").arg(&tar).arg(&image)).context("podman import")?;
        Ok(p)
    };
    match setup() {
        Ok(p) => probe(Box::new(p)),
        Err(e) => PeerState::Failed(first_line(&format!("{e:#}"))),
    }
}

// ---------------------------------------------------------------- exec peers

/// `runc exec` of `true` in one long-running container (`sleep infinity`)
/// built from the same kind of bundle as [`OciRuntime`].
pub struct RuncExec {
    bin: PathBuf,
    state: PathBuf,
    name: String,
}

impl Peer for RuncExec {
    fn round(&mut self, _id: &str) -> Result<()> {
        run_ok(
            Command::new(&self.bin)
                .arg("--root")
                .arg(&self.state)
                .args(["exec", &self.name, "true"]),
        )?;
        Ok(())
    }
}

impl Drop for RuncExec {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.state)
            .args(["delete", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts `sleep infinity` detached in a runc container for [`RuncExec`].
pub fn runc_exec(tmp: &Path, cgroup_parent: &str) -> PeerState {
    let Some(bin) = which("runc") else {
        return PeerState::Missing("runc not installed (apt: runc)".into());
    };
    let setup = || -> Result<RuncExec> {
        let dir = tmp.join("runc-exec");
        let mut bundle = Bundle::create(&bin, &dir.join("bundle"), cgroup_parent)?;
        bundle.base["process"]["args"] = json!(["sleep", "infinity"]);
        let name = format!("wb-exec-{}", std::process::id());
        bundle.prepare(&name, "runc-exec")?;
        let peer = RuncExec {
            bin: bin.clone(),
            state: dir.join("state"),
            name,
        };
        // Detached: the container must not hold our pipes.
        let status = Command::new(&bin)
            .arg("--root")
            .arg(&peer.state)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle.dir)
            .arg(&peer.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("runc run -d")?;
        if !status.success() {
            bail!("runc run -d of sleep infinity exited with {status}");
        }
        Ok(peer)
    };
    match setup() {
        Ok(p) => probe(Box::new(p)),
        Err(e) => PeerState::Failed(first_line(&format!("{e:#}"))),
    }
}

/// `podman exec` of `true` in one long-running container (`sleep infinity`)
/// of an imported tiny rootfs (`true`, `sleep` and their libraries).
pub struct PodmanExec {
    podman: Podman,
    name: String,
}

impl Peer for PodmanExec {
    fn round(&mut self, _id: &str) -> Result<()> {
        run_ok(
            self.podman
                .cmd()
                .args(["exec", &self.name, "/usr/bin/true"]),
        )?;
        Ok(())
    }
}

impl Drop for PodmanExec {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Then `Podman`'s drop resets the private storage.
    }
}

/// Starts the container for [`PodmanExec`].
pub fn podman_exec(tmp: &Path, cgroup_parent: &str) -> PeerState {
    let Some(bin) = which("podman") else {
        return PeerState::Missing("podman not installed (apt: podman)".into());
    };
    if which("runc").is_none() {
        return PeerState::Missing("podman --runtime runc needs runc (apt: runc)".into());
    }
    let setup = || -> Result<PodmanExec> {
        let dir = tmp.join("podman-exec");
        fs::create_dir_all(&dir)?;
        let tar = tiny_rootfs_tar(&dir, &["/usr/bin/true", "/usr/bin/sleep"])?;
        let base_args: Vec<String> = vec![
            "--root".into(),
            dir.join("storage").to_string_lossy().into(),
            "--runroot".into(),
            dir.join("run").to_string_lossy().into(),
            "--tmpdir".into(),
            dir.join("tmp").to_string_lossy().into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ];
        let image = "localhost/warren-bench-sleep:latest";
        let podman = Podman {
            bin: bin.clone(),
            base_args,
            run_args: Vec::new(),
        };
        run_ok(podman.cmd().arg("import").arg(&tar).arg(image)).context("podman import")?;
        let name = format!("wb-exec-{}", std::process::id());
        run_ok(podman.cmd().args([
            "--runtime",
            "runc",
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cgroup-parent",
            &format!("/{cgroup_parent}/podman-exec"),
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            image,
            "/usr/bin/sleep",
            "infinity",
        ]))
        .context("podman run -d")?;
        Ok(PodmanExec { podman, name })
    };
    match setup() {
        Ok(p) => probe(Box::new(p)),
        Err(e) => PeerState::Failed(first_line(&format!("{e:#}"))),
    }
}
