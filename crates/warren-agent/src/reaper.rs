//! PID 1's reaper: collects every exited child (ours and orphans reparented
//! to us) and hands exit statuses to whoever spawned the process.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, Sender<i32>>,
    children: usize,
}

/// Shared by every connection; one background thread does the waiting.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<(Mutex<Waiters>, Condvar)>,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Self {
        let reaper = Self::default();
        let worker = reaper.clone();
        std::thread::spawn(move || worker.reap_forever());
        reaper
    }

    /// Spawns `cmd` and registers for its exit status, atomically with respect
    /// to the reaper so a fast exit is never lost.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, Receiver<i32>)> {
        let (lock, cvar) = &*self.state;
        let mut waiters = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        let (tx, rx) = channel();
        waiters.by_pid.insert(child.id() as i32, tx);
        waiters.children += 1;
        cvar.notify_one();
        Ok((child, rx))
    }

    fn reap_forever(&self) {
        let (lock, cvar) = &*self.state;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a live int.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let mut waiters = lock.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = waiters.by_pid.remove(&pid) {
                    waiters.children = waiters.children.saturating_sub(1);
                    let _ = tx.send(status);
                }
                continue;
            }
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                // No children at all: sleep until the next spawn.
                let waiters = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let _unused = cvar
                    .wait_timeout(waiters, std::time::Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

/// The shell convention: exit code, or 128 + signal number.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    }
}
