//! The agent's listener when it binds its socket itself (the gVisor driver).
//!
//! gVisor cannot checkpoint a socket bound to, or connected through, a host
//! unix socket ("Cannot save endpoint with bound host socket"), so the
//! daemon asks the agent to let go of them first:
//!
//! * SIGUSR1: when another process has bound a unix socket (a host socket
//!   under `--host-uds=create`, which gVisor cannot checkpoint), write
//!   `unix PATH` to `quiesced` and keep serving; otherwise close the listener, remove its socket file, shut down every
//!   connection, wait until no socket is open in this process, then write
//!   `quiesced` (`ok`, or `busy N` when N sockets stayed open) next to the
//!   socket path, where the daemon sees it.
//! * SIGUSR2: remove `quiesced` and bind the listener again (after a
//!   restore, or after a checkpoint that kept the sandbox running).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::init::{accept_connection, Agent};

/// Write end of the self-pipe the signal handler reports to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// How long open connections get to close before a checkpoint is refused.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the file written next to the socket once it is quiesced.
pub const QUIESCED_FILE: &str = "quiesced";

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

fn install_handlers() -> std::io::Result<i32> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    for signal in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls write(2).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: installs a handler for a signal number we name; no old action wanted.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fds[0])
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The socket fds open in this process.
fn open_sockets() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("socket:")
                .then_some(fd)
        })
        .collect()
}

/// A unix socket path bound in the sandbox other than `own` (abstract
/// sockets have no host file and do not count), from `/proc/net/unix`.
fn foreign_bound_socket(own: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    bound_paths(&table)
        .into_iter()
        .find(|p| Path::new(p) != own)
}

/// The filesystem paths in a `/proc/net/unix` table (the 8th column).
fn bound_paths(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let path = line.split_whitespace().nth(7)?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Writes the verdict file next to `path` (whole, then renamed: the daemon
/// never reads half a verdict).
fn write_verdict(path: &Path, verdict: &str) {
    let marker = path.with_file_name(QUIESCED_FILE);
    let tmp = path.with_file_name(".quiesced.tmp");
    if let Err(e) = std::fs::write(&tmp, verdict).and_then(|()| std::fs::rename(&tmp, &marker)) {
        eprintln!("warren-agent: write {}: {e}", marker.display());
    }
}

/// Shuts every connection down and waits for their threads to close them.
fn quiesce(path: &Path) {
    // gVisor refuses (EPERM) to unlink the host socket it made for a
    // listener in the same run; the daemon removes it from the host side
    // before asking for the socket again.
    let _ = std::fs::remove_file(path);
    for fd in open_sockets() {
        // SAFETY: shutdown on an fd number only changes that socket's state;
        // its owner still closes it.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    let mut left = open_sockets().len();
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        left = open_sockets().len();
    }
    let verdict = if left == 0 {
        "ok".to_string()
    } else {
        format!("busy {left}")
    };
    write_verdict(path, &verdict);
}

/// Binds `path` and serves connections until the process ends.
pub fn serve(path: &Path, agent: &Arc<Agent>) -> i32 {
    let signals = match install_handlers() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("warren-agent: signal handlers: {e}");
            return 1;
        }
    };
    let mut listener = match bind(path) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("warren-agent: bind {}: {e}", path.display());
            return 1;
        }
    };
    loop {
        let mut fds = vec![libc::pollfd {
            fd: signals,
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(l) = &listener {
            fds.push(libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a live array of pollfd of the length we pass.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 16];
            // SAFETY: reads into a local buffer of the given length.
            let got = unsafe { libc::read(signals, buf.as_mut_ptr().cast(), buf.len()) };
            for signal in buf.iter().take(usize::try_from(got).unwrap_or(0)) {
                match i32::from(*signal) {
                    libc::SIGUSR1 => {
                        // A socket another process bound is a host socket
                        // (`--host-uds=create`) gVisor cannot checkpoint:
                        // say so and keep serving.
                        if let Some(other) = foreign_bound_socket(path) {
                            write_verdict(path, &format!("unix {other}"));
                            continue;
                        }
                        listener = None;
                        quiesce(path);
                    }
                    libc::SIGUSR2 => {
                        let _ = std::fs::remove_file(path.with_file_name(QUIESCED_FILE));
                        if listener.is_none() {
                            match bind(path) {
                                Ok(l) => listener = Some(l),
                                Err(e) => {
                                    eprintln!("warren-agent: bind {}: {e}", path.display())
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let readable = fds.get(1).is_some_and(|p| p.revents != 0);
        if let (true, Some(l)) = (readable, &listener) {
            loop {
                match l.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        accept_connection(agent, stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        eprintln!("warren-agent: accept: {e}");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bound_paths;

    #[test]
    fn bound_paths_skip_unbound_and_abstract_sockets() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 11 /.warren/sock/agent.sock
0000000000000000: 00000002 00000000 00000000 0001 03 12
0000000000000000: 00000002 00000000 00010000 0001 01 13 @abstract
0000000000000000: 00000002 00000000 00010000 0001 01 14 /tmp/app.sock
";
        assert_eq!(
            bound_paths(table),
            vec![
                "/.warren/sock/agent.sock".to_string(),
                "/tmp/app.sock".to_string()
            ]
        );
    }
}
