//! End-to-end: the port proxy, WebSocket pass-through, the TCP tunnel
//! (`warren port-forward`), host routing, exposure and its auth, against a
//! real daemon and a real python server inside a `--network none` sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{http_unix, Daemon};
use sha2::{Digest, Sha256};

/// HTTP port of the python server in the sandbox.
const HTTP_PORT: u16 = 8000;
/// TCP echo port of the python server in the sandbox.
const ECHO_PORT: u16 = 7000;

/// Stdlib-only server: `/headers` (the request headers as JSON), `/big?n=N`
/// (N bytes of a pattern, streamed), `POST /echo` (sha256 and length of the
/// body), `/ws` (a minimal RFC 6455 echo), anything else "hello PATH"; plus
/// a TCP echo server.
const SERVER: &str = r#"
import base64, hashlib, json, socket, struct, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def echo_server():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 7000)); s.listen(16)
    def serve(c):
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

def recv_exact(f, n):
    b = b""
    while len(b) < n:
        d = f.read(n - len(b))
        if not d: raise EOFError
        b += d
    return b

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_body(self, body, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/headers"):
            h = {k.lower(): v for k, v in self.headers.items()}
            self.send_body(json.dumps({"path": self.path, "headers": h}).encode(), "application/json")
        elif self.path.startswith("/big"):
            n = int(self.path.split("n=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = bytes(range(256)) * 4096
            left = n
            while left > 0:
                part = chunk[:min(left, len(chunk))]
                self.wfile.write(part)
                left -= len(part)
        elif self.path.startswith("/slow"):
            self.send_response(200)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"first"); self.wfile.flush()
            time.sleep(3)
            self.wfile.write(b"second"); self.wfile.flush()
        elif self.path.startswith("/ws"):
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            f = self.rfile
            while True:
                try:
                    b1, b2 = recv_exact(f, 2)
                except EOFError:
                    break
                op = b1 & 0x0F
                n = b2 & 0x7F
                if n == 126: n = struct.unpack(">H", recv_exact(f, 2))[0]
                elif n == 127: n = struct.unpack(">Q", recv_exact(f, 8))[0]
                mask = recv_exact(f, 4) if b2 & 0x80 else b"\0\0\0\0"
                data = bytes(x ^ mask[i % 4] for i, x in enumerate(recv_exact(f, n)))
                if op == 8:
                    self.wfile.write(b"\x88\x00"); self.wfile.flush(); break
                out = bytes([0x80 | op])
                out += bytes([len(data)]) if len(data) < 126 else b"\x7e" + struct.pack(">H", len(data))
                self.wfile.write(out + data); self.wfile.flush()
            self.close_connection = True
        else:
            self.send_body(("hello " + self.path).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = recv_exact(self.rfile, n) if n else b""
        self.send_body(json.dumps({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode(), "application/json")

threading.Thread(target=echo_server, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sandbox (`--network none`) running [`SERVER`], listening on both ports.
fn sandbox_with_server(d: &Daemon) -> String {
    sandbox_with_server_and(d, &[])
}

/// Like [`sandbox_with_server`], with more `create` flags.
fn sandbox_with_server_and(d: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["--network", "none"];
    args.extend_from_slice(extra);
    let id = d.create(&args);
    let out = d.warren(&["exec", "-d", &id, "--", "python3", "-c", SERVER]);
    assert!(
        out.status.success(),
        "starting the server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = d.warren_json(&["ports", &id]);
        let ports: Vec<u64> = list["listening"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["port"].as_u64().unwrap())
            .collect();
        if ports.contains(&u64::from(HTTP_PORT)) && ports.contains(&u64::from(ECHO_PORT)) {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "the python server did not listen: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request with `Connection: close`; reads the whole answer.
fn request<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: warren\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn unix(d: &Daemon) -> UnixStream {
    UnixStream::connect(&d.socket).unwrap()
}

fn tcp(addr: &str) -> std::net::TcpStream {
    std::net::TcpStream::connect(addr).unwrap()
}

fn proxy_path(id: &str, port: u16, rest: &str) -> String {
    format!("/v1/sandboxes/{id}/ports/{port}{rest}")
}

#[test]
fn proxy_streams_http_both_ways_and_reports_unreachable_ports() {
    require_root!();
    let d = Daemon::start();
    let id = sandbox_with_server(&d);

    // `warren ports` lists the python listeners.
    let out = d.warren(&["ports", &id]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("8000") && table.contains("7000"), "{table}");

    // A plain GET, the rest of the path and the query reach the app.
    let r = request(
        unix(&d),
        "GET",
        &proxy_path(&id, HTTP_PORT, "/a/b?x=1"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello /a/b?x=1");
    let r = request(unix(&d), "GET", &proxy_path(&id, HTTP_PORT, ""), &[], b"");
    assert_eq!(r.text(), "hello /");

    // A POST body (20 MiB, over the API body limit) streams to the app whole.
    let body: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = request(
        unix(&d),
        "POST",
        &proxy_path(&id, HTTP_PORT, "/echo"),
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["len"], body.len());
    assert_eq!(answer["sha256"], hex::encode(Sha256::digest(&body)));

    // A big download streams with the right length and digest.
    let n: usize = 64 * 1024 * 1024;
    let started = Instant::now();
    let r = request(
        unix(&d),
        "GET",
        &proxy_path(&id, HTTP_PORT, &format!("/big?n={n}")),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    let pattern: Vec<u8> = (0..=255u8).collect::<Vec<u8>>().repeat(4096);
    let mut expected = Sha256::new();
    let mut left = n;
    while left > 0 {
        let part = left.min(pattern.len());
        expected.update(&pattern[..part]);
        left -= part;
    }
    assert_eq!(Sha256::digest(&r.body), expected.finalize());
    eprintln!("64 MiB through the proxy in {:?}", started.elapsed());

    // Nothing listening: 502 saying so.
    let r = request(unix(&d), "GET", &proxy_path(&id, 9, "/"), &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("port_unreachable"), "{}", r.text());
    assert!(
        r.text()
            .contains(&format!("nothing is listening on port 9 in sandbox {id}")),
        "{}",
        r.text()
    );

    // Exposing ports outside 1–65535 or twice: 422 naming them.
    for (body, needle) in [
        (r#"{"ports":[{"port":0}]}"#, "port 0"),
        (r#"{"ports":[{"port":70000}]}"#, "port 70000"),
        (r#"{"ports":[{"port":80},{"port":80}]}"#, "port 80"),
    ] {
        let (status, answer) = http_unix(
            &d.socket,
            "PUT",
            &format!("/v1/sandboxes/{id}/ports"),
            Some(body),
        )
        .unwrap();
        assert_eq!(status, 422, "{answer}");
        assert!(answer.contains(needle), "{needle} in {answer}");
    }
    let out = d.warren(&["ports", &id, "--expose", "70000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("70000"));

    // Expose / unexpose through the CLI, recorded as an event.
    let list = d.warren_json(&["ports", &id, "--expose", "8000:public", "--expose", "7000"]);
    assert_eq!(
        list["exposed"],
        serde_json::json!([
            {"port": 7000, "visibility": "private"},
            {"port": 8000, "visibility": "public"}
        ])
    );
    let list = d.warren_json(&["ports", &id, "--unexpose", "7000"]);
    assert_eq!(list["exposed"].as_array().unwrap().len(), 1);
    let events = d.warren_json(&["events", &id]);
    assert!(events.to_string().contains("ports_changed"), "{events}");
}

#[test]
fn websocket_upgrades_pass_through() {
    require_root!();
    let d = Daemon::start();
    let id = sandbox_with_server(&d);
    let mut s = unix(&d);
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: warren\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        proxy_path(&id, HTTP_PORT, "/ws")
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "accept key passed through: {head}"
    );
    for message in [&b"hello"[..], &[7u8; 300][..]] {
        // A masked binary frame.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x82];
        if message.len() < 126 {
            frame.push(0x80 | message.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(message.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        let mut hdr = [0u8; 2];
        reader.read_exact(&mut hdr).unwrap();
        assert_eq!(hdr[0], 0x82);
        let len = match hdr[1] {
            126 => {
                let mut l = [0u8; 2];
                reader.read_exact(&mut l).unwrap();
                usize::from(u16::from_be_bytes(l))
            }
            n => usize::from(n),
        };
        let mut echoed = vec![0u8; len];
        reader.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
}

/// `warren port-forward` in the background; killed on drop.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn port_forward_tunnels_tcp_over_the_unix_socket_and_tcp() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(Some(addr.clone()));
    let id = sandbox_with_server(&d);
    let key = d.warren_json(&["keys", "create", "ports"])["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    // A sandbox token with only the `ports` scope is enough too.
    let (status, body) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/tokens"),
        Some(r#"{"scope":"ports","ttlSecs":300}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let over_unix = || {
        Command::new(harness::warren_bin())
            .arg("--data-dir")
            .arg(d.data_dir())
            .arg("--socket")
            .arg(&d.socket)
            .arg("--no-autostart")
            .args(["--json", "port-forward", &id, "0:7000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let over_tcp_with = |credential: &str| {
        Command::new(harness::warren_bin())
            .args([
                "--url",
                &format!("http://{addr}"),
                "--json",
                "port-forward",
                &id,
                "0:7000",
            ])
            .env("WARREN_API_KEY", credential)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let over_tcp = || over_tcp_with(&key);
    let over_tcp_token = || over_tcp_with(&token);
    for start in [&over_unix as &dyn Fn() -> Child, &over_tcp, &over_tcp_token] {
        let mut forward = Forward(start());
        let mut line = String::new();
        BufReader::new(forward.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad forwarding line {line:?}: {e}"));
        assert_eq!(event["event"], "forwarding", "{line}");
        let local = event["local"].as_str().unwrap().to_owned();
        // Half-close: send, shut down the write half, read the whole echo
        // (the app sees the end-of-stream and closes after answering).
        let mut half = tcp(&local);
        half.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        half.write_all(b"until eof").unwrap();
        half.shutdown(std::net::Shutdown::Write).unwrap();
        let mut echoed = Vec::new();
        half.read_to_end(&mut echoed).unwrap();
        assert_eq!(echoed, b"until eof");
        // Two connections at once, each echoed separately.
        let mut a = tcp(&local);
        let mut b = tcp(&local);
        for (s, text) in [(&mut a, &b"first"[..]), (&mut b, &b"second"[..])] {
            s.write_all(text).unwrap();
            let mut got = vec![0u8; text.len()];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, text);
        }
        // A larger transfer.
        let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let mut writer = a.try_clone().unwrap();
        let sent = big.clone();
        let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut got = vec![0u8; big.len()];
        a.read_exact(&mut got).unwrap();
        t.join().unwrap();
        assert!(got == big, "1 MiB echoed intact");
    }
}

#[test]
fn tcp_listener_auth_public_ports_and_credentials_stay_out_of_the_sandbox() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(Some(addr.clone()));
    let id = sandbox_with_server(&d);
    let key = d.warren_json(&["keys", "create", "ports"])["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {key}");
    let headers_path = proxy_path(&id, HTTP_PORT, "/headers?token=zzz&keep=1");

    // With the key over TCP: reaches the app, which does not see the key,
    // keeps its own `token` parameter (not a Warren credential), and sees
    // the forwarding headers.
    let r = request(
        tcp(&addr),
        "GET",
        &headers_path,
        &[("Authorization", &bearer), ("X-App", "yes")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["path"], "/headers?token=zzz&keep=1");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert!(
        !r.text().contains(&key),
        "the key reached the sandbox: {seen}"
    );
    assert_eq!(seen["headers"]["x-app"], "yes");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");

    // Private (not exposed) port without a key: 401.
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, "/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    d.warren_json(&["ports", &id, "--expose", "8000"]);
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, "/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 401, "private stays private: {}", r.text());

    // Public port: reachable without a key.
    d.warren_json(&["ports", &id, "--expose", "8000:public"]);
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, "/pub"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello /pub");
    // …but only that port, and nothing else of the API.
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, ECHO_PORT, "/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        tcp(&addr),
        "GET",
        &format!("/v1/sandboxes/{id}/ports"),
        &[],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn host_routing_with_a_domain() {
    require_root!();
    let d = Daemon::start_with_serve_args(&["--domain", "warren.test"]);
    let id = sandbox_with_server(&d);
    let host = format!("{HTTP_PORT}-{id}.warren.test");
    let r = request(unix(&d), "GET", "/some/page?q=2", &[("Host", &host)], b"");
    assert_eq!(r.status, 200, "{} {}", r.head, r.text());
    assert_eq!(r.text(), "hello /some/page?q=2");
    // Also with a port in the Host header.
    let r = request(
        unix(&d),
        "GET",
        "/headers",
        &[("Host", &format!("{host}:8443"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-host"], format!("{host}:8443"));
    // Other hosts still reach the API.
    let (status, _) = http_unix(&d.socket, "GET", "/healthz", None).unwrap();
    assert_eq!(status, 200);
    let list = d.warren_json(&["ports", &id]);
    assert_eq!(list["hostPattern"], format!("{{port}}-{id}.warren.test"));

    // A host that merely contains the domain is not routed: the API answers.
    let r = request(
        unix(&d),
        "GET",
        "/healthz",
        &[("Host", &format!("{host}.evil"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("hello"), "reached the app: {}", r.text());

    // `/tcp` on a routed host is the app's path, never the raw tunnel.
    let r = request(
        unix(&d),
        "GET",
        "/tcp",
        &[
            ("Host", &host),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{} {}", r.head, r.text());
    assert_eq!(r.text(), "hello /tcp");
}

#[test]
fn host_routing_over_tcp_keeps_private_ports_private() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with_serve_args(&["--domain", "warren.test", "--listen", &addr]);
    let id = sandbox_with_server(&d);
    let host = format!("{HTTP_PORT}-{id}.warren.test");
    // Anonymous, not exposed or private: 401.
    let r = request(tcp(&addr), "GET", "/x", &[("Host", &host)], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    d.warren_json(&["ports", &id, "--expose", "8000"]);
    let r = request(tcp(&addr), "GET", "/x", &[("Host", &host)], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    // Public: served without credentials.
    d.warren_json(&["ports", &id, "--expose", "8000:public"]);
    let r = request(tcp(&addr), "GET", "/x", &[("Host", &host)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello /x");
    // `.evil` after the domain is not routed: the API refuses the caller.
    let r = request(
        tcp(&addr),
        "GET",
        "/x",
        &[("Host", &format!("{host}.evil"))],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("hello"), "{}", r.text());
}

#[test]
fn a_sandbox_whose_processes_died_is_never_reached() {
    require_root!();
    let d = Daemon::start();
    let id = sandbox_with_server(&d);
    let pids = d.sandbox_pids(&id);
    assert!(!pids.is_empty());
    for pid in &pids {
        // SAFETY: kill with a pid of the sandbox's cgroup and SIGKILL.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.sandbox_pids(&id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whether or not the daemon has noticed yet: no listeners, no proxy,
    // and no host pid in any message.
    let (status, body) =
        http_unix(&d.socket, "GET", &format!("/v1/sandboxes/{id}/ports"), None).unwrap();
    if status == 200 {
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["listening"], serde_json::json!([]), "{body}");
    } else {
        assert_eq!(status, 409, "{body}");
    }
    let r = request(unix(&d), "GET", &proxy_path(&id, HTTP_PORT, "/"), &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    for pid in &pids {
        for text in [&body, &r.text()] {
            assert!(
                !text.contains(&format!(" {pid}")) && !text.contains(&format!("/{pid}/")),
                "a host pid in {text}"
            );
        }
    }
}

#[test]
fn responses_stream_without_buffering() {
    require_root!();
    let d = Daemon::start();
    let id = sandbox_with_server(&d);
    let mut s = unix(&d);
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n",
        proxy_path(&id, HTTP_PORT, "/slow")
    )
    .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // The app waits 3 s before the rest: the first part came through first.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the first bytes took {:?}",
        started.elapsed()
    );
    s.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("firstsecond"));
}

#[test]
fn sandbox_tokens_reach_ports_only_of_their_sandbox_and_never_the_app() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(Some(addr.clone()));
    let id = sandbox_with_server(&d);
    let other = d.create(&["--network", "none"]);
    let mint = |sandbox: &str, scope: &str| -> String {
        let (status, body) = http_unix(
            &d.socket,
            "POST",
            &format!("/v1/sandboxes/{sandbox}/tokens"),
            Some(&format!(r#"{{"scope":"{scope}","ttlSecs":300}}"#)),
        )
        .unwrap();
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let ports_token = mint(&id, "ports");
    let read_token = mint(&id, "read");
    let other_token = mint(&other, "ports");

    // `?token=` on the proxy: reaches the app, which never sees it.
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, &format!("/headers?a=1&token={ports_token}")),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["path"], "/headers?a=1");
    assert!(!r.text().contains(&ports_token), "{seen}");

    // A page opened with `?token=` sends it back in `Referer`: stripped
    // before the app sees it; the app's own `token` values are kept.
    let referer = format!(
        "http://127.0.0.1/v1/sandboxes/{id}/ports/8000/page?token={ports_token}&token=mine&b=2"
    );
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, &format!("/headers?token={ports_token}")),
        &[("Referer", &referer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(!r.text().contains(&ports_token), "{seen}");
    assert_eq!(
        seen["headers"]["referer"],
        format!("http://127.0.0.1/v1/sandboxes/{id}/ports/8000/page?token=mine&b=2")
    );

    // As a bearer header: stripped too.
    let bearer = format!("Bearer {ports_token}");
    let r = request(
        tcp(&addr),
        "GET",
        &proxy_path(&id, HTTP_PORT, "/headers"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(&ports_token), "{}", r.text());

    // Another sandbox's token, or a token without the ports scope: 403.
    for token in [&other_token, &read_token] {
        let r = request(
            tcp(&addr),
            "GET",
            &proxy_path(&id, HTTP_PORT, &format!("/?token={token}")),
            &[],
            b"",
        );
        assert_eq!(r.status, 403, "{}", r.text());
    }
}

#[test]
fn a_paused_sandbox_answers_409_or_auto_resumes() {
    require_root!();
    let d = Daemon::start();
    let plain = sandbox_with_server(&d);
    let auto = sandbox_with_server_and(&d, &["--auto-resume"]);
    for id in [&plain, &auto] {
        let out = d.warren(&["pause", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = request(
        unix(&d),
        "GET",
        &proxy_path(&plain, HTTP_PORT, "/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("paused"), "{}", r.text());

    let r = request(
        unix(&d),
        "GET",
        &proxy_path(&auto, HTTP_PORT, "/x"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello /x");
    assert_eq!(d.warren_json(&["inspect", &auto])["state"], "running");
}
