//! Reaching into a sandbox's network namespace from the daemon: TCP
//! connections to its ports (made with `setns` on a helper thread, so they
//! work in every network mode, `none` included) and the sockets listening
//! there (its `/proc/PID/net/tcp{,6}`).
//!
//! The namespace is named by a process ([`NetnsOwner`]: pid and start time).
//! A recorded pid can outlive its sandbox and be reused by a host process,
//! so every operation checks that the pid still is the same process (its
//! start time) around the moment it uses the namespace, and never works in
//! the daemon's own network namespace. Errors never name the host pid.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::process_state;

/// How long a connect inside the namespace may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many connect threads at once (each may wait up to
/// [`CONNECT_TIMEOUT`]); further connects wait for a free slot.
const MAX_CONNECT_THREADS: usize = 64;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The process whose network namespace is the sandbox's: a host pid and its
/// start time (field 22 of `/proc/PID/stat`), so that a recycled pid is never
/// taken for the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsOwner {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl NetnsOwner {
    /// The owner of `info`'s network namespace when `pid` (from
    /// [`crate::Driver::network_namespace_pid`]) is `info`'s process.
    pub fn new(pid: i32, start_time: u64) -> Self {
        Self { pid, start_time }
    }
}

/// Why an operation in a sandbox's network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process is gone (or its pid now belongs to another process).
    #[error("the sandbox's process is gone")]
    Gone,
    /// The process is in the daemon's own network namespace: refused, so
    /// the daemon never reaches host services for a sandbox.
    #[error("the sandbox's process is in the daemon's own network namespace")]
    OwnNamespace,
    /// A step failed; `source` has the kind (`ConnectionRefused`…).
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    fn io(step: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { step, source }
    }

    /// True when the connection was refused (nothing listens on the port).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
    }
}

/// A socket listening in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// `tcp` or `tcp6`.
    pub protocol: &'static str,
    /// Bound address, printed (`0.0.0.0`, `::1`…).
    pub address: String,
    /// Port.
    pub port: u16,
}

/// Device and inode of a namespace file: its identity.
type NsId = (u64, u64);

fn ns_id(file: &File) -> io::Result<NsId> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The identity of the daemon's own network namespace.
fn own_ns_id() -> Result<NsId, NetnsError> {
    let own = File::open("/proc/self/ns/net")
        .map_err(NetnsError::io("opening the daemon's network namespace"))?;
    ns_id(&own).map_err(NetnsError::io("reading the daemon's network namespace"))
}

/// Whether the process `pid` is in the daemon's own network namespace (a
/// stale pid that now names a host process). Used by the network code
/// before it configures a namespace, which has only the pid.
pub(crate) fn in_daemon_namespace(pid: i32) -> Result<bool, NetnsError> {
    let ns = open_ns(NetnsOwner::new(pid, 0))?;
    let id = ns_id(&ns).map_err(NetnsError::io("reading the sandbox's network namespace"))?;
    Ok(id == own_ns_id()?)
}

/// Opens `/proc/PID/ns/net`; a pid that does not exist is [`NetnsError::Gone`].
fn open_ns(owner: NetnsOwner) -> Result<File, NetnsError> {
    File::open(format!("/proc/{}/ns/net", owner.pid)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
            NetnsError::Gone
        } else {
            NetnsError::Io {
                step: "opening the sandbox's network namespace",
                source: e,
            }
        }
    })
}

/// Opens the owner's network namespace and checks, after opening, that the
/// pid still is the owner (so the open namespace is the owner's: a pid is
/// not reused while its process lives) and that the namespace is not the
/// daemon's own. Returns the namespace and its identity.
fn pin(owner: NetnsOwner) -> Result<(File, NsId), NetnsError> {
    let ns = open_ns(owner)?;
    if !process_state::is_same_live_process(owner.pid, owner.start_time) {
        return Err(NetnsError::Gone);
    }
    let id = ns_id(&ns).map_err(NetnsError::io("reading the sandbox's network namespace"))?;
    if id == own_ns_id()? {
        return Err(NetnsError::OwnNamespace);
    }
    Ok((ns, id))
}

/// Limits the connect threads running at once.
fn connect_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(MAX_CONNECT_THREADS)))
        .clone()
}

/// Connects to `127.0.0.1:port` inside the network namespace of `owner`.
///
/// The socket is created on a thread of its own that enters the namespace
/// (`setns`), connects, and switches back; the thread then ends, so no
/// other task ever runs in the sandbox's namespace. At most
/// 64 such threads run at once. A refused connection
/// is [`NetnsError::is_refused`]; a process that is gone (or whose pid was
/// reused) is [`NetnsError::Gone`].
pub async fn connect_tcp(
    owner: NetnsOwner,
    port: u16,
) -> Result<tokio::net::TcpStream, NetnsError> {
    let slot = connect_slots()
        .acquire_owned()
        .await
        .map_err(|_| NetnsError::Io {
            step: "waiting for a netns thread",
            source: io::Error::other("the connect limiter is closed"),
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("warren-netns".into())
        .spawn(move || {
            // The slot is freed when the thread is done, even if nobody
            // waits for its answer any more.
            let _slot = slot;
            let _ = tx.send(connect_in_namespace(owner, port));
        })
        .map_err(NetnsError::io("starting a netns thread"))?;
    let stream = rx.await.map_err(|_| NetnsError::Io {
        step: "waiting for the netns thread",
        source: io::Error::other("the netns thread ended without an answer"),
    })??;
    stream
        .set_nonblocking(true)
        .map_err(NetnsError::io("making the socket non-blocking"))?;
    let _ = stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(stream).map_err(NetnsError::io("registering the socket"))
}

/// Runs on a dedicated thread: pin the namespace, enter, connect, leave.
fn connect_in_namespace(owner: NetnsOwner, port: u16) -> Result<TcpStream, NetnsError> {
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(NetnsError::io("opening this thread's network namespace"))?;
    let (target, _) = pin(owner)?;
    enter(&target).map_err(NetnsError::io("entering the sandbox's network namespace"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Loopback is up in every sandbox (the launch plan's `LoopbackUp`).
    let connected = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
    if let Err(e) = enter(&own) {
        // This thread is stuck in the sandbox's namespace; it ends right
        // after, so nothing else runs there. The socket is still good.
        tracing::warn!(error = %e, "could not switch a netns thread back; it ends now");
    }
    connected.map_err(NetnsError::io("connecting"))
}

fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes a valid open fd (borrowed from `ns`, alive for the
    // call) and a namespace type; it only changes this thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TCP sockets in LISTEN state in the namespace of `owner`, by port.
///
/// Reads `/proc/PID/net/tcp{,6}`, then checks again that the pid is still
/// the owner and still in the namespace it was in before: what was read is
/// then the sandbox's, never a host process's that took over the pid.
pub fn listening_tcp(owner: NetnsOwner) -> Result<Vec<Listening>, NetnsError> {
    let (_ns, before) = pin(owner)?;
    let mut found = Vec::new();
    for (protocol, file) in [("tcp", "tcp"), ("tcp6", "tcp6")] {
        match std::fs::read_to_string(format!("/proc/{}/net/{file}", owner.pid)) {
            Ok(text) => found.extend(parse_proc_net_tcp(protocol, &text)),
            // No IPv6 in the kernel: no tcp6 file.
            Err(e) if e.kind() == io::ErrorKind::NotFound && file == "tcp6" => {}
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Err(NetnsError::Gone)
            }
            Err(e) => {
                return Err(NetnsError::Io {
                    step: "reading the sandbox's TCP sockets",
                    source: e,
                })
            }
        }
    }
    let after = open_ns(owner)?;
    let after = ns_id(&after).map_err(NetnsError::io("reading the sandbox's network namespace"))?;
    if !process_state::is_same_live_process(owner.pid, owner.start_time) || after != before {
        return Err(NetnsError::Gone);
    }
    found.sort_by(|a, b| (a.port, a.protocol, &a.address).cmp(&(b.port, b.protocol, &b.address)));
    found.dedup();
    Ok(found)
}

/// The LISTEN sockets of one `/proc/net/tcp` or `tcp6` file.
fn parse_proc_net_tcp(protocol: &'static str, text: &str) -> Vec<Listening> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (address, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let address = parse_address(address)?;
            Some(Listening {
                protocol,
                address,
                port,
            })
        })
        .collect()
}

/// `0100007F` → `127.0.0.1`; 32 hex digits → an IPv6 address. The kernel
/// prints each 32-bit word in host byte order.
fn parse_address(hex: &str) -> Option<String> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let digits = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(digits, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?).to_string()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(Ipv6Addr::from(bytes).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 100 0 0 10 0
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv4_listeners_only() {
        let found = parse_proc_net_tcp("tcp", TCP);
        assert_eq!(
            found,
            vec![
                Listening {
                    protocol: "tcp",
                    address: "0.0.0.0".into(),
                    port: 8080
                },
                Listening {
                    protocol: "tcp",
                    address: "127.0.0.1".into(),
                    port: 3306
                },
            ]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv6_listeners() {
        let found = parse_proc_net_tcp("tcp6", TCP6);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].address, "::");
        assert_eq!(found[0].port, 80);
        assert_eq!(found[1].address, "::1");
        assert_eq!(found[1].port, 5432);
    }

    #[test]
    fn ignores_garbage_lines() {
        assert!(parse_proc_net_tcp("tcp", "header\nnonsense\n 0: zz:zz 0 0A\n").is_empty());
        assert!(parse_proc_net_tcp("tcp", "").is_empty());
    }

    /// Our own pid and start time.
    fn me() -> NetnsOwner {
        let pid = std::process::id() as i32;
        NetnsOwner::new(pid, process_state::stat(pid).unwrap().1)
    }

    #[test]
    fn refuses_the_daemons_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listening_tcp(me()).unwrap_err();
        assert!(matches!(err, NetnsError::OwnNamespace), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn never_connects_into_the_daemons_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = connect_tcp(me(), port).await.unwrap_err();
        assert!(matches!(err, NetnsError::OwnNamespace), "{err}");
    }

    #[tokio::test]
    async fn a_recycled_or_missing_pid_is_gone_and_never_named() {
        let mut other = me();
        other.start_time += 1;
        assert!(matches!(listening_tcp(other), Err(NetnsError::Gone)));
        assert!(matches!(
            connect_tcp(other, 80).await,
            Err(NetnsError::Gone)
        ));
        // Above any pid_max (2^22).
        let missing = NetnsOwner::new(1 << 30, 0);
        let err = connect_tcp(missing, 80).await.unwrap_err();
        assert!(matches!(err, NetnsError::Gone), "{err}");
        assert!(!err.to_string().contains(&(1 << 30).to_string()));
    }

    /// A `sleep` in a network namespace of its own (loopback up); killed on drop.
    struct NetnsChild(std::process::Child);

    impl Drop for NetnsChild {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn tool_missing(name: &str) -> bool {
        !std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[tokio::test]
    async fn connects_and_lists_inside_another_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: setns needs root");
            return;
        }
        if tool_missing("unshare") || tool_missing("ip") {
            eprintln!("skipping: needs unshare and ip");
            return;
        }
        let child = NetnsChild(
            std::process::Command::new("unshare")
                .args(["-n", "sh", "-c", "ip link set lo up && exec sleep 60"])
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Wait for `exec sleep` (loopback is up by then).
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            != "sleep"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let owner = NetnsOwner::new(pid, process_state::stat(pid).unwrap().1);

        // A listener made inside the child's namespace (on a thread that
        // enters it), and one in ours on another port.
        let ns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let inside = std::thread::spawn(move || {
            enter(&ns).unwrap();
            std::net::TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        let port = inside.local_addr().unwrap().port();
        let mut ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        while ours.local_addr().unwrap().port() == port {
            ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        }
        let our_port = ours.local_addr().unwrap().port();

        let found = listening_tcp(owner).unwrap();
        assert!(
            found
                .iter()
                .any(|l| l.port == port && l.address == "127.0.0.1"),
            "{found:?}"
        );
        assert!(found.iter().all(|l| l.port != our_port), "{found:?}");

        let stream = connect_tcp(owner, port).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap().port(), port);
        // Our own listener's port is not reachable there.
        let refused = connect_tcp(owner, our_port).await.unwrap_err();
        assert!(refused.is_refused(), "{refused}");

        drop(child);
        assert!(matches!(
            connect_tcp(owner, port).await,
            Err(NetnsError::Gone)
        ));
        assert!(matches!(listening_tcp(owner), Err(NetnsError::Gone)));
    }
}
