//! Host-side facts about a sandbox's PID 1, read from /proc.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// State letter and start time (clock ticks) from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the fields after the command name, which may contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// True when `pid` is running (not a zombie) and started at `start_time`.
pub fn is_same_live_process(pid: i32, start_time: u64) -> bool {
    matches!(stat(pid), Some((state, start)) if start == start_time && state != 'Z' && state != 'X')
}

/// Kills the sandbox's PID 1 (which takes its whole pid namespace with it)
/// and waits until it has exited, reaping it when it is our child.
///
/// A pidfd pins the process: after the start time is checked through it, the
/// signal cannot hit a recycled pid, and poll(2) on it reports the exit.
pub fn kill_and_wait(pid: i32, start_time: u64) {
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a fresh fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        reap(pid);
        return; // already gone
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if is_same_live_process(pid, start_time) {
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            // SAFETY: one live pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left) };
            if n > 0
                || (n < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
            {
                break;
            }
        }
    }
    reap(pid);
}

/// Collects the exit status when the process is (by subreaping) our child.
fn reap(pid: i32) {
    // SAFETY: waitpid with WNOHANG on one pid; a null status pointer is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_state_and_start_time_even_with_odd_command_names() {
        let line = "42 (we ird) name)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(super::parse_stat(line), Some(('S', 987654)));
        assert_eq!(super::parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_live_with_its_start_time() {
        let me = std::process::id() as i32;
        let (_, start) = super::stat(me).unwrap();
        assert!(super::is_same_live_process(me, start));
        assert!(!super::is_same_live_process(me, start + 1));
    }
}
