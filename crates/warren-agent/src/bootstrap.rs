//! The host-side helper: cgroup join → clone → id maps → release child.
//! Single-threaded by construction (no threads are started in this role).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use warren_linux::executor;
use warren_linux::launch::{AgentInitConfig, LaunchConfig, AGENT_PATH_IN_SANDBOX};
use warren_linux::plan::child_plan;
use warren_linux::sys::LinuxSyscalls;

const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// Prints one JSON line for the daemon and returns the exit code.
fn report(result: Result<i32, String>) -> i32 {
    let (line, code) = match result {
        Ok(pid) => (serde_json::json!({ "pid": pid }), 0),
        Err(e) => (serde_json::json!({ "error": e }), 1),
    };
    println!("{line}");
    code
}

pub fn run() -> i32 {
    report(launch())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds points to two ints; O_CLOEXEC keeps them out of the agent.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two fresh fds; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn launch() -> Result<i32, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("read launch config: {e}"))?;
    let cfg: LaunchConfig =
        serde_json::from_str(&input).map_err(|e| format!("parse launch config: {e}"))?;

    // The listening socket exists before the sandbox does, so the daemon can
    // connect as soon as we report; only host root may connect (0600).
    let _ = std::fs::remove_file(&cfg.agent_socket);
    let listener = UnixListener::bind(&cfg.agent_socket)
        .map_err(|e| format!("bind agent socket {}: {e}", cfg.agent_socket.display()))?;
    std::fs::set_permissions(&cfg.agent_socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod agent socket: {e}"))?;

    // 1. Join the cgroups; the clone inherits them.
    let me = std::process::id().to_string();
    for procs in &cfg.cgroup_procs {
        std::fs::write(procs, &me).map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }

    // The daemon reads this helper's stdout until EOF, so the sandbox must
    // not keep it. Setup errors travel over the ready pipe; the agent's own
    // stdio is /dev/null, which is also what a program inside sees through
    // /proc/1/fd (no host path, no host file).
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let (go_read, go_write) = pipe()?;
    let (ready_read, ready_write) = pipe()?;

    // 2. Clone with fork semantics into the new namespaces.
    // SAFETY: this process is single-threaded, so the child may run arbitrary
    // code after the clone, exactly as after fork(2).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (NAMESPACES | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(go_write);
        drop(ready_read);
        child(&cfg, go_read, ready_write, listener, null);
    }
    let pid = pid as i32;
    drop(go_read);
    drop(ready_write);

    // 3. Map sandbox root to the unprivileged host range.
    let map = format!("0 {} {}\n", cfg.id_map_base, cfg.id_map_count);
    for file in ["uid_map", "gid_map"] {
        if let Err(e) = std::fs::write(format!("/proc/{pid}/{file}"), &map) {
            kill(pid);
            return Err(format!("write {file}: {e}"));
        }
    }
    // 4. Release the child and wait for its verdict (EOF when it execs).
    let mut go = File::from(go_write);
    if let Err(e) = go.write_all(b"g") {
        kill(pid);
        return Err(format!("release child: {e}"));
    }
    let mut verdict = String::new();
    let _ = File::from(ready_read).read_to_string(&mut verdict);
    if let Some(err) = verdict.split("ERR ").nth(1) {
        kill(pid);
        return Err(err.trim().to_string());
    }
    if !verdict.starts_with("OK") {
        kill(pid);
        return Err("sandbox init exited before reporting".into());
    }
    Ok(pid)
}

fn kill(pid: i32) {
    // SAFETY: plain kill(2) and waitpid(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The cloned child: finish the isolation steps, then exec the agent.
fn child(cfg: &LaunchConfig, go: OwnedFd, ready: OwnedFd, listener: UnixListener, null: File) -> ! {
    let mut ready = File::from(ready);
    let result = prepare_child(cfg, go, &listener, null);
    match result {
        Ok(()) => {
            let _ = ready.write_all(b"OK\n");
            let err = exec_agent(cfg, listener.as_raw_fd());
            let _ = ready.write_all(format!("ERR exec agent: {err}\n").as_bytes());
        }
        Err(e) => {
            let _ = ready.write_all(format!("ERR {e}\n").as_bytes());
        }
    }
    // SAFETY: _exit skips destructors and atexit handlers of the parent's image.
    unsafe { libc::_exit(1) }
}

fn prepare_child(
    cfg: &LaunchConfig,
    go: OwnedFd,
    listener: &UnixListener,
    null: File,
) -> Result<(), String> {
    redirect_stdio(null)?;
    let mut byte = [0u8; 1];
    File::from(go)
        .read_exact(&mut byte)
        .map_err(|e| format!("wait for id maps: {e}"))?;
    // Become root of the new user namespace (host uid = id_map_base).
    // SAFETY: plain id-setting syscalls with no pointers but setgroups' null list.
    unsafe {
        if libc::setresgid(0, 0, 0) < 0
            || libc::setgroups(0, std::ptr::null()) < 0
            || libc::setresuid(0, 0, 0) < 0
        {
            return Err(format!(
                "become sandbox root: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let fd = listener.as_raw_fd();
    let steps = child_plan(cfg, &[fd]);
    executor::apply(&mut LinuxSyscalls, &steps).map_err(|e| e.to_string())?;
    // The listening socket must survive exec; everything else is CLOEXEC.
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(format!(
            "keep agent socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Points stdin, stdout and stderr at `null`.
fn redirect_stdio(null: File) -> Result<(), String> {
    // SAFETY: dup2 onto the standard fds with an fd we own for the duration of the call.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0
            || libc::dup2(null.as_raw_fd(), 1) < 0
            || libc::dup2(null.as_raw_fd(), 2) < 0
        {
            return Err(format!(
                "redirect stdio: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn exec_agent(cfg: &LaunchConfig, listen_fd: i32) -> std::io::Error {
    let init = AgentInitConfig {
        listen_fd,
        listen_path: None,
        workdir: cfg.workdir.clone(),
        env: cfg.env.clone(),
        user: cfg.user.clone(),
    };
    let json = serde_json::to_string(&init).unwrap_or_default();
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(AGENT_PATH_IN_SANDBOX)
            .arg0("warren-agent")
            .arg("init")
            .arg(json)
            .env_clear()
            .current_dir("/"),
    );
    err
}

use std::os::unix::process::CommandExt as _;
