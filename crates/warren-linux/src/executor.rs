//! Applies a setup plan through the [`Syscalls`] layer. Dumb on purpose: all
//! decisions are in the plan.

use std::path::{Path, PathBuf};

use crate::caps;
use crate::plan::SetupStep;
use crate::sys::Syscalls;

/// A setup step failed; names the step and carries the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct SetupError {
    /// The step, e.g. `overlay mount`.
    pub step: &'static str,
    /// The path it acted on.
    pub path: PathBuf,
    /// The kernel's answer.
    #[source]
    pub source: std::io::Error,
}

fn at(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SetupError {
    let path = path.to_path_buf();
    move |source| SetupError { step, path, source }
}

const MS_BIND: u64 = libc::MS_BIND;
const MS_REC: u64 = libc::MS_REC;
const MS_REMOUNT: u64 = libc::MS_REMOUNT;
const MS_RDONLY: u64 = libc::MS_RDONLY;
const MS_NOSUID: u64 = libc::MS_NOSUID;
const MS_NODEV: u64 = libc::MS_NODEV;
const MS_NOEXEC: u64 = libc::MS_NOEXEC;

/// Mount flags the kernel locks on mounts inherited from a more privileged
/// namespace; a read-only remount must repeat them or it fails with EPERM.
fn locked_flags(statvfs_flags: u64) -> u64 {
    let mut flags = 0;
    for (st, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if statvfs_flags & st != 0 {
            flags |= ms;
        }
    }
    flags
}

fn bind_read_only(
    sys: &mut dyn Syscalls,
    source: &Path,
    target: &Path,
    extra: u64,
) -> Result<(), SetupError> {
    sys.mount(Some(source), target, None, MS_BIND, None)
        .map_err(at("bind mount", target))?;
    let inherited = sys.mount_flags(target).map_err(at("statvfs", target))?;
    sys.mount(
        None,
        target,
        None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | extra | locked_flags(inherited),
        None,
    )
    .map_err(at("read-only remount", target))
}

/// Runs one step.
pub fn apply_step(sys: &mut dyn Syscalls, step: &SetupStep) -> Result<(), SetupError> {
    match step {
        SetupStep::MakeRootSlave => sys
            .mount(None, Path::new("/"), None, libc::MS_SLAVE | MS_REC, None)
            .map_err(at("make / rslave", Path::new("/"))),
        SetupStep::MountOverlay {
            target,
            lower,
            upper,
            work,
        } => {
            let lower = lower
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={},userxattr",
                upper.display(),
                work.display()
            );
            sys.mount(
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                0,
                Some(&data),
            )
            .map_err(at("overlay mount", target))
        }
        SetupStep::BindReadOnly { source, target } => {
            match sys.probe(source) {
                Some(true) => sys.mkdir_all(target).map_err(at("mkdir", target))?,
                Some(false) => sys
                    .create_file(target)
                    .map_err(at("create mount point", target))?,
                None => return Ok(()), // the host lacks it (e.g. /opt): nothing to show
            }
            bind_read_only(sys, source, target, MS_NOSUID | MS_NODEV)
        }
        SetupStep::HideFile { target } => match sys.probe(target) {
            None => Ok(()),
            Some(true) => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    target,
                    Some("tmpfs"),
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    Some("size=0"),
                )
                .map_err(at("hide directory", target)),
            Some(false) => bind_read_only(
                sys,
                Path::new("/dev/null"),
                target,
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
            ),
        },
        SetupStep::BindResolvConf { source, target } => {
            // Only through a real /etc of the new root (lstat: a symlink is
            // not a directory), and never through a symlink at the file
            // itself: one there is replaced by an empty file in the
            // sandbox's writable layer (an image lacking the file gets one).
            let Some(etc) = target.parent() else {
                return Ok(());
            };
            match sys.probe(etc) {
                Some(true) => {}
                // An image without /etc gets one (nothing there to follow).
                None => sys.mkdir_all(etc).map_err(at("mkdir", etc))?,
                // A file or a symlink (which could lead out of the root).
                Some(false) => return Ok(()),
            }
            if sys.is_symlink(target) && sys.remove_file(target).is_err() {
                return Ok(()); // read-only /etc (host image): keep the image's
            }
            match sys.probe(target) {
                Some(true) => return Ok(()), // a directory: leave it alone
                Some(false) => {}
                None => sys
                    .create_file(target)
                    .map_err(at("create mount point", target))?,
            }
            bind_read_only(sys, source, target, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        }
        SetupStep::BindPrivateFile { source, target } => {
            sys.create_file(target)
                .map_err(at("create mount point", target))?;
            sys.mount(Some(source), target, None, MS_BIND, None)
                .map_err(at("bind private file", target))?;
            let inherited = sys.mount_flags(target).map_err(at("statvfs", target))?;
            sys.mount(
                None,
                target,
                None,
                MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | locked_flags(inherited),
                None,
            )
            .map_err(at("remount private file", target))
        }
        SetupStep::MountProc { target } => {
            sys.mkdir_all(target).map_err(at("mkdir", target))?;
            sys.mount(
                Some(Path::new("proc")),
                target,
                Some("proc"),
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
                None,
            )
            .map_err(at("proc mount", target))
        }
        SetupStep::MountSysfs { target } => {
            sys.mkdir_all(target).map_err(at("mkdir", target))?;
            sys.mount(
                Some(Path::new("sysfs")),
                target,
                Some("sysfs"),
                MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                None,
            )
            .map_err(at("sysfs mount", target))
        }
        SetupStep::MountTmpfs {
            target,
            flags,
            options,
        } => {
            sys.mkdir_all(target).map_err(at("mkdir", target))?;
            sys.mount(
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                *flags,
                Some(options),
            )
            .map_err(at("tmpfs mount", target))
        }
        SetupStep::BindDevice { source, target } => {
            sys.create_file(target)
                .map_err(at("create device mount point", target))?;
            sys.mount(Some(source), target, None, MS_BIND, None)
                .map_err(at("device bind", target))
        }
        SetupStep::MountDevpts { target } => {
            sys.mkdir_all(target).map_err(at("mkdir", target))?;
            sys.mount(
                Some(Path::new("devpts")),
                target,
                Some("devpts"),
                MS_NOSUID | MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=620"),
            )
            .map_err(at("devpts mount", target))
        }
        SetupStep::Symlink { original, link } => {
            sys.symlink(original, link).map_err(at("symlink", link))
        }
        SetupStep::PivotRoot { new_root } => {
            sys.pivot_root(new_root).map_err(at("pivot_root", new_root))
        }
        SetupStep::MaskPath { path } => match sys.probe(path) {
            None => Ok(()),
            Some(true) => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    path,
                    Some("tmpfs"),
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    Some("size=0"),
                )
                .map_err(at("mask directory", path)),
            Some(false) => sys
                .mount(Some(Path::new("/dev/null")), path, None, MS_BIND, None)
                .map_err(at("mask file", path)),
        },
        SetupStep::ReadOnlyPath { path } => {
            if sys.probe(path).is_none() {
                return Ok(());
            }
            bind_read_only(sys, path, path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        }
        SetupStep::SetHostname { name } => sys
            .sethostname(name)
            .map_err(at("sethostname", Path::new(name))),
        SetupStep::LoopbackUp => sys
            .loopback_up()
            .map_err(at("bring loopback up", Path::new("lo"))),
        SetupStep::CloseInheritedFds { keep } => sys
            .cloexec_fds_except(keep)
            .map_err(at("close inherited fds", Path::new("/proc/self/fd"))),
        SetupStep::SetNoNewPrivs => sys
            .set_no_new_privs()
            .map_err(at("no_new_privs", Path::new("-"))),
        SetupStep::DropCapabilities { keep } => sys
            .drop_capabilities(caps::mask(keep))
            .map_err(at("drop capabilities", Path::new("-"))),
        SetupStep::SetRlimits { limits } => limits.iter().try_for_each(|(resource, limit)| {
            sys.set_rlimit(*resource, *limit)
                .map_err(at("setrlimit", Path::new("-")))
        }),
        SetupStep::InstallSeccomp { rules } => sys
            .install_seccomp(&crate::seccomp::compile(rules))
            .map_err(at("install seccomp filter", Path::new("-"))),
    }
}

/// Runs every step in order; stops at the first failure.
pub fn apply(sys: &mut dyn Syscalls, steps: &[SetupStep]) -> Result<(), SetupError> {
    steps.iter().try_for_each(|s| apply_step(sys, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{BindMount, LaunchConfig};
    use crate::plan::child_plan;
    use crate::sys::RecordingSyscalls;

    fn config() -> LaunchConfig {
        LaunchConfig {
            id: "sbx".into(),
            lower_dirs: vec!["/l".into()],
            upper_dir: "/u".into(),
            work_dir: "/w".into(),
            rootfs: "/r".into(),
            read_only_binds: vec![BindMount {
                source: "/usr".into(),
                target: "/usr".into(),
            }],
            hidden_files: vec![],
            private_files: vec![],
            resolv_conf: None,
            agent_binary: "/a".into(),
            agent_socket: "/s".into(),
            cgroup_procs: vec![],
            id_map_base: 1,
            id_map_count: 1,
            workdir: "/workspace".into(),
            env: vec![],
            user: None,
        }
    }

    #[test]
    fn recorded_calls_follow_the_plan_order() {
        let mut sys = RecordingSyscalls {
            existing_dirs: vec!["/usr".into()],
            ..Default::default()
        };
        apply(&mut sys, &child_plan(&config(), &[3])).unwrap();
        let idx = |needle: &str| {
            sys.calls
                .iter()
                .position(|c| c.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} missing: {:#?}", sys.calls))
        };
        assert_eq!(idx("mount none -> / "), 0);
        assert!(
            sys.calls[1].contains("type=overlay")
                && sys.calls[1].contains("lowerdir=/l,upperdir=/u,workdir=/w")
        );
        assert!(idx("mount /usr -> /r/usr") < idx("pivot_root /r"));
        assert!(idx("mount proc -> /r/proc") < idx("pivot_root /r"));
        assert!(idx("pivot_root") < idx("sethostname sbx"));
        assert!(idx("pivot_root") < idx("loopback up"));
        assert!(idx("loopback up") < idx("cloexec except [3]"));
        assert!(idx("cloexec") < idx("no_new_privs"));
        assert_eq!(
            sys.calls[sys.calls.len() - 2],
            format!(
                "drop_caps keep={:#x}",
                caps::mask(caps::DEFAULT_CAPABILITIES)
            )
        );
        assert!(
            sys.calls.last().unwrap().starts_with("seccomp "),
            "seccomp must be the last call"
        );
    }

    #[test]
    fn read_only_binds_are_remounted_read_only_nosuid() {
        let mut sys = RecordingSyscalls {
            existing_dirs: vec!["/usr".into()],
            ..Default::default()
        };
        apply_step(
            &mut sys,
            &SetupStep::BindReadOnly {
                source: "/usr".into(),
                target: "/r/usr".into(),
            },
        )
        .unwrap();
        let remount = sys
            .calls
            .iter()
            .find(|c| c.starts_with("mount none -> /r/usr"))
            .unwrap();
        let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
        assert!(remount.contains(&format!("flags={flags:#x}")), "{remount}");
    }

    #[test]
    fn resolv_conf_needs_a_real_etc_and_is_bound_read_only() {
        let step = SetupStep::BindResolvConf {
            source: "/data/network/resolv.conf".into(),
            target: "/r/etc/resolv.conf".into(),
        };
        // /etc is not a directory of the root (e.g. a symlink): skipped.
        let mut sys = RecordingSyscalls::default();
        apply_step(&mut sys, &step).unwrap();
        assert!(sys.calls.is_empty(), "{:?}", sys.calls);
        let mut sys = RecordingSyscalls {
            existing_dirs: vec!["/r/etc".into()],
            ..Default::default()
        };
        apply_step(&mut sys, &step).unwrap();
        assert!(sys.calls[0].starts_with("mount /data/network/resolv.conf -> /r/etc/resolv.conf"));
        let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        assert!(
            sys.calls[1].contains(&format!("flags={flags:#x}")),
            "{:?}",
            sys.calls
        );
    }

    #[test]
    fn missing_optional_host_paths_are_skipped() {
        let mut sys = RecordingSyscalls::default();
        // probe reports a file (false) for paths not in existing_dirs; HideFile on an absent path is a no-op
        // only when probe returns None, which RecordingSyscalls never does, so check MaskPath on a file.
        apply_step(
            &mut sys,
            &SetupStep::MaskPath {
                path: "/proc/kcore".into(),
            },
        )
        .unwrap();
        assert_eq!(
            sys.calls,
            vec!["mount /dev/null -> /proc/kcore type=- flags=0x1000 data=-".to_string()]
        );
    }
}
