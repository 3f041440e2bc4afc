//! Security regressions, the network: what a sandbox must never reach
//! whatever its mode (the host, its loopback, the gateway's other ports,
//! link-local metadata, private ranges unless allowed, other sandboxes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../e2e/harness/mod.rs"]
mod harness;
#[path = "../e2e/little_internet/mod.rs"]
mod little_internet;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::Daemon;
use little_internet::{exec, NetDaemon, World, METADATA, PRIVATE, WEB};

/// A host TCP listener that records whether anything connected; stopped on
/// drop.
struct HostListener {
    port: u16,
    touched: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HostListener {
    fn bind(addr: &str) -> Self {
        let listener = TcpListener::bind(format!("{addr}:0")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let touched = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (Arc::clone(&touched), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        t.store(true, Ordering::SeqCst);
                        let mut buf = [0u8; 64];
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = conn.read(&mut buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            touched,
            stop,
        }
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Connects from inside the sandbox: `ok`, `timeout`, or the errno name.
fn connect(d: &Daemon, id: &str, addr: &str, port: u16) -> String {
    let script = format!(
        r#"
import errno, socket
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("{addr}", {port}))
    print("ok")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#
    );
    let o = exec(d, id, &["/usr/bin/python3", "-c", &script]);
    assert_eq!(o.code, Some(0), "probe failed: {o:?}");
    o.stdout.trim().to_string()
}

/// Asserts a connection is refused at once (a reject, not a silent drop
/// and not an answer).
fn assert_refused(d: &Daemon, id: &str, addr: &str, port: u16) {
    let result = connect(d, id, addr, port);
    assert!(
        result != "ok" && result != "timeout",
        "{addr}:{port} from sandbox {id}: {result}"
    );
}

/// The host's eth0-style addresses (not loopback, not this test's links).
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-j", "addr"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            let name = l["ifname"].as_str().unwrap_or("");
            name != "lo" && !name.starts_with("wv") && !name.starts_with("wli")
        })
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_none_sandbox_cannot_reach_the_hosts_loopback_services() {
    require_root!();
    let d = NetDaemon::start(&[]);
    let listener = HostListener::bind("127.0.0.1");
    let id = d.create(&["--network", "none"]);
    let o = exec(&d, &id, &["ls", "/sys/class/net"]);
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{o:?}"
    );
    assert_refused(&d, &id, "127.0.0.1", listener.port);
    for addr in host_addresses() {
        let result = connect(&d, &id, &addr, listener.port);
        assert_ne!(result, "ok", "{addr}: {result}");
    }
    assert!(!listener.touched(), "the host listener saw a connection");
}

#[test]
fn an_internet_sandbox_cannot_reach_the_host_metadata_private_ranges_or_other_sandboxes() {
    require_root!();
    if let Some(reason) = little_internet::missing_tools() {
        eprintln!("skipped: {reason}");
        return;
    }
    let world = World::start();
    let d = NetDaemon::start(&World::serve_args("10.215.9.0/24"));
    let loopback = HostListener::bind("127.0.0.1");
    let any = HostListener::bind("0.0.0.0");

    let a = d.create(&[]);
    // The positive control: the world is reachable.
    assert_eq!(connect(&d, &a, WEB, 80), "ok");

    // The host: its loopback (the sandbox's own), its addresses, the gateway.
    assert_refused(&d, &a, "127.0.0.1", loopback.port);
    let host = host_addresses();
    assert!(!host.is_empty());
    for addr in &host {
        assert_refused(&d, &a, addr, any.port);
        assert_refused(&d, &a, addr, 22);
    }
    let gateway = "10.215.9.1";
    assert_refused(&d, &a, gateway, any.port);
    assert_refused(&d, &a, gateway, 53 + 1);
    assert!(
        !loopback.touched() && !any.touched(),
        "a host listener saw a connection"
    );

    // Link-local metadata and a private host. Without the world's stand-in
    // (the host routes 169.254.169.254 itself) the refusal still has to come
    // from the sandbox's firewall, whatever is there.
    if !world.metadata_stand_in {
        eprintln!("note: {METADATA} is the host's own route here, not the world's test host");
    }
    assert_refused(&d, &a, METADATA, 80);
    assert_refused(&d, &a, PRIVATE, 80);
    let o = exec(
        &d,
        &a,
        &["curl", "-sS", "--max-time", "10", "http://meta.test/"],
    );
    assert_ne!(o.code, Some(0), "{o:?}");

    // Another sandbox's address, even with a listener there.
    let b = d.create(&[]);
    let b_addr = d.warren_json(&["network", &b])["address"]
        .as_str()
        .unwrap()
        .to_string();
    let o = exec(
        &d,
        &b,
        &[
            "sh",
            "-c",
            "setsid -f /usr/bin/python3 -m http.server 8080 >/dev/null 2>&1 </dev/null",
        ],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    // Waits for b's own listener (reached from inside b).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = connect(&d, &b, &b_addr, 8080);
        if result == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's own listener never answered: {result}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_refused(&d, &a, &b_addr, 8080);

    // An explicit allowOut re-allows the private host, and only it.
    let c = d.create(&["--allow-out", &format!("{PRIVATE}/32")]);
    assert_eq!(connect(&d, &c, PRIVATE, 80), "ok");
    assert_refused(&d, &c, METADATA, 80);
    assert_refused(&d, &c, &b_addr, 8080);
}
