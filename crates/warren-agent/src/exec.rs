//! Runs one command to completion: output captured through poll(2), the exit
//! observed through a pidfd, timeouts enforced on the whole process group.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_proto::{ExecDone, ExecRequest};

use crate::reaper::{exit_code, Reaper};

/// Output kept per stream; beyond it bytes are dropped (the daemon's API has
/// its own limits, this only bounds the agent's memory).
const MAX_CAPTURE: usize = 64 * 1024 * 1024;

fn failed(stream: u64, code: i32, message: String) -> ExecDone {
    ExecDone {
        stream,
        exit_code: code,
        stderr: message.into_bytes(),
        ..Default::default()
    }
}

pub fn run(
    req: ExecRequest,
    base_env: &[(String, String)],
    workdir: &str,
    default_user: Option<&str>,
    reaper: &Reaper,
) -> ExecDone {
    let started = Instant::now();
    let Some(program) = req.argv.first() else {
        return failed(req.stream, 127, "warren: empty command\n".into());
    };
    let cwd = req.cwd.clone().unwrap_or_else(|| workdir.to_string());
    if !Path::new(&cwd).is_dir() {
        return failed(
            req.stream,
            1,
            format!("warren: cannot use {cwd} as working directory: no such directory\n"),
        );
    }
    let mut cmd = match build_command(
        program,
        &req.argv[1..],
        base_env,
        &req.env,
        &cwd,
        req.user.as_deref().or(default_user),
    ) {
        Ok(cmd) => cmd,
        Err(message) => return failed(req.stream, 126, message),
    };
    cmd.stdin(if req.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (mut child, exited) = match reaper.spawn(&mut cmd) {
        Ok(spawned) => spawned,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed(
                req.stream,
                127,
                format!("warren: {program}: command not found\n"),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return failed(
                req.stream,
                126,
                format!("warren: {program}: permission denied\n"),
            );
        }
        Err(e) => return failed(req.stream, 126, format!("warren: {program}: {e}\n")),
    };
    let pid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        let input = req.stdin.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let deadline = req.timeout_ms.map(|ms| started + Duration::from_millis(ms));
    let mut stdout = Capture::new(child.stdout.take().map(OwnedFd::from));
    let mut stderr = Capture::new(child.stderr.take().map(OwnedFd::from));
    let pidfd = pidfd_open(pid);
    let mut timed_out = false;
    let mut exited_seen = false;
    loop {
        let timeout_ms = match deadline {
            Some(d) if !timed_out => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            _ => -1,
        };
        let mut fds = [
            stdout.pollfd(),
            stderr.pollfd(),
            pollfd(pidfd.as_ref().map_or(-1, |f| f.as_raw_fd())),
        ];
        // SAFETY: fds is a live array of three pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        if fds[0].revents != 0 {
            stdout.read_available();
        }
        if fds[1].revents != 0 {
            stderr.read_available();
        }
        if fds[2].revents != 0 {
            exited_seen = true;
        }
        if exited_seen || (pidfd.is_none() && stdout.closed() && stderr.closed()) {
            // The process is gone: take what is already in the pipes, but do
            // not wait for background children that inherited them.
            stdout.drain();
            stderr.drain();
            break;
        }
        if let Some(d) = deadline {
            if !timed_out && Instant::now() >= d {
                // SAFETY: kill(2) on the command's own process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                timed_out = true;
            }
        }
    }
    let status = exited.recv().unwrap_or(-1);
    if timed_out {
        // Anything the group forked after the first kill goes too.
        // SAFETY: kill(2) on the command's own process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    ExecDone {
        stream: req.stream,
        exit_code: exit_code(status),
        stdout: stdout.data,
        stderr: stderr.data,
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out,
    }
}

/// A command in its own process group, as `user` (default root), with the
/// sandbox's environment, the user's HOME/USER/LOGNAME, then `extra_env`.
/// Errors are a message for the user.
pub(crate) fn build_command(
    program: &str,
    args: &[String],
    base_env: &[(String, String)],
    extra_env: &[(String, String)],
    cwd: &str,
    user: Option<&str>,
) -> Result<Command, String> {
    let mut cmd = build_command_in(program, args, base_env, extra_env, cwd, user)?;
    cmd.process_group(0);
    Ok(cmd)
}

/// [`build_command`] without the process group (the caller arranges its own
/// session, as a pty process does with `setsid`).
pub(crate) fn build_command_in(
    program: &str,
    args: &[String],
    base_env: &[(String, String)],
    extra_env: &[(String, String)],
    cwd: &str,
    user: Option<&str>,
) -> Result<Command, String> {
    let user_name = user.unwrap_or("root");
    let account = crate::users::resolve_or_create(user_name)
        .map_err(|e| format!("warren: user {user_name}: {e}\n"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs([
            ("HOME", account.home.as_str()),
            ("USER", account.name.as_str()),
            ("LOGNAME", account.name.as_str()),
        ])
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .uid(account.uid)
        .gid(account.gid);
    Ok(cmd)
}

pub(crate) fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: see above; fd is fresh and owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

struct Capture {
    fd: Option<std::fs::File>,
    data: Vec<u8>,
}

impl Capture {
    fn new(fd: Option<OwnedFd>) -> Self {
        let fd = fd.map(|fd| {
            // SAFETY: fcntl on an fd we own; makes reads non-blocking.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            std::fs::File::from(fd)
        });
        Self {
            fd,
            data: Vec::new(),
        }
    }

    fn pollfd(&self) -> libc::pollfd {
        pollfd(self.fd.as_ref().map_or(-1, |f| f.as_raw_fd()))
    }

    fn closed(&self) -> bool {
        self.fd.is_none()
    }

    /// Reads until the pipe would block or ends.
    fn read_available(&mut self) {
        let Some(file) = self.fd.as_mut() else { return };
        let mut buf = [0u8; 65536];
        loop {
            match file.read(&mut buf) {
                Ok(0) => {
                    self.fd = None;
                    return;
                }
                Ok(n) => {
                    let room = MAX_CAPTURE.saturating_sub(self.data.len());
                    self.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.fd = None;
                    return;
                }
            }
        }
    }

    fn drain(&mut self) {
        self.read_available();
        self.fd = None;
    }
}
