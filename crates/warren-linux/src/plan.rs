//! The isolation plan: which kernel steps the sandbox's first process takes,
//! in which order. Pure data, so the order is reviewed and tested like code.

use std::path::{Path, PathBuf};

use crate::caps::DEFAULT_CAPABILITIES;
use crate::launch::{LaunchConfig, AGENT_PATH_IN_SANDBOX};

/// One step of the child's setup, run inside the new namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Stop mount events from propagating back to the host.
    MakeRootSlave,
    /// Mount the overlay root.
    MountOverlay {
        /// Mount point.
        target: PathBuf,
        /// Lower layers, topmost first.
        lower: Vec<PathBuf>,
        /// Upper layer.
        upper: PathBuf,
        /// Overlay work directory.
        work: PathBuf,
    },
    /// Bind a host path read-only, nosuid, nodev.
    BindReadOnly {
        /// Host path.
        source: PathBuf,
        /// Mount point (created if missing).
        target: PathBuf,
    },
    /// Bind a sandbox-private file read-write over an image path.
    BindPrivateFile {
        /// Host path (in the sandbox's directory).
        source: PathBuf,
        /// Mount point inside the new root.
        target: PathBuf,
    },
    /// Bind a host file read-only over `<root>/etc/resolv.conf` without
    /// following a symlink out of the root (see `LaunchConfig::resolv_conf`).
    BindResolvConf {
        /// Host path.
        source: PathBuf,
        /// `<root>/etc/resolv.conf`.
        target: PathBuf,
    },
    /// Hide a file behind /dev/null (skipped when the file does not exist).
    HideFile {
        /// The file.
        target: PathBuf,
    },
    /// Fresh procfs for the new pid namespace.
    MountProc {
        /// Mount point.
        target: PathBuf,
    },
    /// Read-only sysfs for the new network namespace.
    MountSysfs {
        /// Mount point.
        target: PathBuf,
    },
    /// A tmpfs with the given options.
    MountTmpfs {
        /// Mount point.
        target: PathBuf,
        /// Mount flags (`MS_*`).
        flags: u64,
        /// tmpfs options, e.g. `mode=755,size=64k`.
        options: String,
    },
    /// A device node bound from the host's /dev.
    BindDevice {
        /// Host device, e.g. `/dev/null`.
        source: PathBuf,
        /// Mount point (an empty file is created).
        target: PathBuf,
    },
    /// A private devpts instance.
    MountDevpts {
        /// Mount point.
        target: PathBuf,
    },
    /// A symlink.
    Symlink {
        /// What the link points to.
        original: PathBuf,
        /// The link itself.
        link: PathBuf,
    },
    /// pivot_root into the new root and detach the old one.
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
    },
    /// Hide a path inside the new root (file: /dev/null; directory: empty read-only tmpfs).
    MaskPath {
        /// Path inside the new root.
        path: PathBuf,
    },
    /// Make a path inside the new root read-only.
    ReadOnlyPath {
        /// Path inside the new root.
        path: PathBuf,
    },
    /// Set the UTS hostname.
    SetHostname {
        /// The hostname.
        name: String,
    },
    /// Bring the new network namespace's loopback interface up, so that
    /// programs in the sandbox can talk to each other over 127.0.0.1 in every
    /// network mode, and make interfaces added later (the `eth0` of a
    /// networked sandbox) IPv4-only: sandboxes have no IPv6 route out.
    LoopbackUp,
    /// Mark every inherited fd above stderr close-on-exec except the listed ones.
    CloseInheritedFds {
        /// Fds that must survive into the agent.
        keep: Vec<i32>,
    },
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries cannot gain privileges.
    SetNoNewPrivs,
    /// Keep only these capabilities (bounding, effective, permitted, inheritable; ambient cleared).
    DropCapabilities {
        /// Capability numbers to keep.
        keep: Vec<u32>,
    },
    /// Set resource limits (soft = hard), each capped at the current hard limit.
    SetRlimits {
        /// (RLIMIT_* resource, limit) pairs.
        limits: Vec<(u32, u64)>,
    },
    /// Install the seccomp filter: the very last step before exec.
    InstallSeccomp {
        /// The policy, compiled by the executor.
        rules: Vec<crate::seccomp::Rule>,
    },
}

/// Open files per process inside a sandbox (capped at the host's hard limit,
/// since sandbox root has no CAP_SYS_RESOURCE over the host).
pub const DEFAULT_NOFILE: u64 = 65536;

/// Paths masked like runc's defaults.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths made read-only like runc's defaults.
pub const READ_ONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Builds the child's setup plan, in the isolation order of DESIGN.md:
/// make / rslave → overlay root → read-only binds → /proc, /dev, /sys →
/// pivot_root → masked and read-only paths → hostname → rlimits → close fds →
/// no_new_privs → drop caps → seccomp last. (Landlock would slot in before the
/// capability drop; it is not used yet.)
pub fn child_plan(cfg: &LaunchConfig, keep_fds: &[i32]) -> Vec<SetupStep> {
    let root = cfg.rootfs.as_path();
    let mut steps = vec![
        SetupStep::MakeRootSlave,
        SetupStep::MountOverlay {
            target: root.to_path_buf(),
            lower: cfg.lower_dirs.clone(),
            upper: cfg.upper_dir.clone(),
            work: cfg.work_dir.clone(),
        },
    ];
    for bind in &cfg.read_only_binds {
        steps.push(SetupStep::BindReadOnly {
            source: bind.source.clone(),
            target: inside(root, &bind.target),
        });
    }
    for file in &cfg.private_files {
        steps.push(SetupStep::BindPrivateFile {
            source: file.source.clone(),
            target: inside(root, &file.target),
        });
    }
    for hidden in &cfg.hidden_files {
        steps.push(SetupStep::HideFile {
            target: inside(root, hidden),
        });
    }
    if let Some(source) = &cfg.resolv_conf {
        steps.push(SetupStep::BindResolvConf {
            source: source.clone(),
            target: root.join("etc/resolv.conf"),
        });
    }
    steps.push(SetupStep::BindReadOnly {
        source: cfg.agent_binary.clone(),
        target: inside(root, Path::new(AGENT_PATH_IN_SANDBOX)),
    });
    steps.push(SetupStep::MountProc {
        target: root.join("proc"),
    });
    let dev = root.join("dev");
    steps.push(SetupStep::MountTmpfs {
        target: dev.clone(),
        flags: (libc::MS_NOSUID | libc::MS_NOEXEC),
        options: "mode=755,size=65536k".into(),
    });
    for name in DEVICES {
        steps.push(SetupStep::BindDevice {
            source: Path::new("/dev").join(name),
            target: dev.join(name),
        });
    }
    steps.push(SetupStep::MountDevpts {
        target: dev.join("pts"),
    });
    steps.push(SetupStep::MountTmpfs {
        target: dev.join("shm"),
        flags: (libc::MS_NOSUID | libc::MS_NODEV),
        options: "mode=1777,size=65536k".into(),
    });
    for (original, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        steps.push(SetupStep::Symlink {
            original: original.into(),
            link: dev.join(link),
        });
    }
    steps.push(SetupStep::MountSysfs {
        target: root.join("sys"),
    });
    steps.push(SetupStep::PivotRoot {
        new_root: root.to_path_buf(),
    });
    // Before /proc/sys turns read-only.
    steps.push(SetupStep::LoopbackUp);
    for path in MASKED_PATHS {
        steps.push(SetupStep::MaskPath { path: path.into() });
    }
    for path in READ_ONLY_PATHS {
        steps.push(SetupStep::ReadOnlyPath { path: path.into() });
    }
    steps.push(SetupStep::SetHostname {
        name: cfg.id.clone(),
    });
    steps.push(SetupStep::SetRlimits {
        limits: vec![
            (libc::RLIMIT_NOFILE, DEFAULT_NOFILE),
            (libc::RLIMIT_CORE, 0),
        ],
    });
    steps.push(SetupStep::CloseInheritedFds {
        keep: keep_fds.to_vec(),
    });
    steps.push(SetupStep::SetNoNewPrivs);
    steps.push(SetupStep::DropCapabilities {
        keep: DEFAULT_CAPABILITIES.to_vec(),
    });
    steps.push(SetupStep::InstallSeccomp {
        rules: crate::seccomp::default_policy(),
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::BindMount;

    pub(crate) fn sample_config() -> LaunchConfig {
        LaunchConfig {
            id: "abc123".into(),
            lower_dirs: vec!["/data/images/host/rootfs".into()],
            upper_dir: "/data/sandboxes/abc123/upper".into(),
            work_dir: "/data/sandboxes/abc123/work".into(),
            rootfs: "/data/sandboxes/abc123/rootfs".into(),
            read_only_binds: vec![BindMount {
                source: "/usr".into(),
                target: "/usr".into(),
            }],
            hidden_files: vec!["/etc/shadow".into()],
            private_files: vec![],
            resolv_conf: None,
            agent_binary: "/data/bin/warren-agent".into(),
            agent_socket: "/data/sandboxes/abc123/agent.sock".into(),
            cgroup_procs: vec![],
            id_map_base: 1_000_000,
            id_map_count: 65536,
            workdir: "/workspace".into(),
            env: vec![],
            user: None,
        }
    }

    fn position(steps: &[SetupStep], pred: impl Fn(&SetupStep) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    #[test]
    fn isolation_steps_follow_the_design_order() {
        let steps = child_plan(&sample_config(), &[3]);
        let slave = position(&steps, |s| matches!(s, SetupStep::MakeRootSlave));
        let overlay = position(&steps, |s| matches!(s, SetupStep::MountOverlay { .. }));
        let proc_ = position(&steps, |s| matches!(s, SetupStep::MountProc { .. }));
        let sys = position(&steps, |s| matches!(s, SetupStep::MountSysfs { .. }));
        let pivot = position(&steps, |s| matches!(s, SetupStep::PivotRoot { .. }));
        let mask = position(&steps, |s| matches!(s, SetupStep::MaskPath { .. }));
        let host = position(&steps, |s| matches!(s, SetupStep::SetHostname { .. }));
        let fds = position(&steps, |s| matches!(s, SetupStep::CloseInheritedFds { .. }));
        let nnp = position(&steps, |s| matches!(s, SetupStep::SetNoNewPrivs));
        let caps = position(&steps, |s| matches!(s, SetupStep::DropCapabilities { .. }));
        let rlimits = position(&steps, |s| matches!(s, SetupStep::SetRlimits { .. }));
        let seccomp = position(&steps, |s| matches!(s, SetupStep::InstallSeccomp { .. }));
        assert_eq!(slave, 0, "propagation must be cut before any mount");
        assert!(overlay < proc_ && proc_ < sys && sys < pivot);
        assert!(pivot < mask && mask < host && host < rlimits && rlimits < fds);
        assert!(fds < nnp && nnp < caps && caps < seccomp);
        assert_eq!(seccomp, steps.len() - 1, "seccomp is installed last");
        // Every mount into the new root happens before pivot_root.
        for s in &steps[pivot + 1..] {
            assert!(!matches!(
                s,
                SetupStep::MountOverlay { .. }
                    | SetupStep::BindReadOnly { .. }
                    | SetupStep::MountProc { .. }
            ));
        }
    }

    #[test]
    fn binds_and_hidden_files_land_inside_the_new_root() {
        let steps = child_plan(&sample_config(), &[]);
        assert!(steps.contains(&SetupStep::BindReadOnly {
            source: "/usr".into(),
            target: "/data/sandboxes/abc123/rootfs/usr".into()
        }));
        assert!(steps.contains(&SetupStep::HideFile {
            target: "/data/sandboxes/abc123/rootfs/etc/shadow".into()
        }));
        assert!(steps.contains(&SetupStep::BindReadOnly {
            source: "/data/bin/warren-agent".into(),
            target: "/data/sandboxes/abc123/rootfs/.warren/agent".into()
        }));
        assert!(steps.contains(&SetupStep::SetHostname {
            name: "abc123".into()
        }));
    }

    #[test]
    fn resolv_conf_is_bound_inside_the_root_before_pivot_root() {
        let mut cfg = sample_config();
        let steps = child_plan(&cfg, &[]);
        assert!(!steps
            .iter()
            .any(|s| matches!(s, SetupStep::BindResolvConf { .. })));
        cfg.resolv_conf = Some("/data/network/resolv.conf".into());
        let steps = child_plan(&cfg, &[]);
        let bind = position(&steps, |s| {
            *s == SetupStep::BindResolvConf {
                source: "/data/network/resolv.conf".into(),
                target: "/data/sandboxes/abc123/rootfs/etc/resolv.conf".into(),
            }
        });
        let pivot = position(&steps, |s| matches!(s, SetupStep::PivotRoot { .. }));
        let etc = position(&steps, |s| matches!(s, SetupStep::BindReadOnly { .. }));
        assert!(etc < bind && bind < pivot);
    }

    #[test]
    fn kept_capabilities_exclude_sys_admin() {
        let steps = child_plan(&sample_config(), &[]);
        let Some(SetupStep::DropCapabilities { keep }) = steps
            .iter()
            .find(|s| matches!(s, SetupStep::DropCapabilities { .. }))
        else {
            panic!("no capability step")
        };
        assert!(!keep.contains(&crate::caps::CAP_SYS_ADMIN));
        assert!(keep.contains(&crate::caps::CAP_CHOWN));
    }
}
