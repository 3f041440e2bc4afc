//! End-to-end: `warren shell` driven through a real pseudo-terminal the way a
//! person would (typing, resizing the window, exiting), and the WebSocket
//! attach route spoken to directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use harness::{http_unix, warren_bin, Daemon};
use tokio_tungstenite::tungstenite::Message;

/// Runs `warren shell` on a fresh pty (30 rows × 100 columns) under `sh`,
/// which records the terminal settings before and after; types commands,
/// resizes the window (TIOCSWINSZ on the master: the kernel sends SIGWINCH),
/// types `exit 3`. Fails with the transcript when anything is off.
const DRIVER: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time

warren, data, sock, sid = sys.argv[1:5]
script = (
    'printf "BEFORE<%s>\\n" "$(stty -g)"; '
    '"$0" --data-dir "$1" --socket "$2" --no-autostart shell "$3"; rc=$?; '
    'printf "AFTER<%s> RC<%s>\\n" "$(stty -g)" "$rc"; exit $rc'
)
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    os.execv("/bin/sh", ["sh", "-c", script, warren, data, sock, sid])

seen = b""

def fail(why):
    sys.stderr.write("FAIL: %s\n--- transcript ---\n%s\n" % (why, seen.decode(errors="replace")))
    sys.exit(1)

def read_until(needle, timeout=20.0):
    global seen
    deadline = time.time() + timeout
    while needle.encode() not in seen:
        left = deadline - time.time()
        if left <= 0:
            fail("timed out waiting for %r" % needle)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                fail("pty closed while waiting for %r" % needle)
            if not chunk:
                fail("pty closed while waiting for %r" % needle)
            seen += chunk
    return seen

def type_(text):
    os.write(fd, text.encode())

read_until("BEFORE<")
mark = len(seen)
type_("stty size; echo M1-$((6*7))\r")
out = read_until("M1-42")[mark:]
if b"30 100" not in out:
    fail("stty size did not report 30 100")
# TCGETS on a master reads its slave: the CLI put the local terminal in raw mode.
lflag = termios.tcgetattr(fd)[3]
if lflag & (termios.ICANON | termios.ECHO | termios.ISIG):
    fail("the local terminal is not in raw mode during the session")

fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
for attempt in range(20):
    time.sleep(0.2)
    mark = len(seen)
    type_("stty size; echo M2-$((6*8+%d))\r" % attempt)
    out = read_until("M2-%d" % (48 + attempt))[mark:]
    if b"40 120" in out:
        break
else:
    fail("stty size never reported 40 120 after the resize")

type_("exit 3\r")
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
text = seen.decode(errors="replace")
before = text.split("BEFORE<", 1)[1].split(">", 1)[0]
if "AFTER<" not in text:
    fail("no AFTER line")
after = text.split("AFTER<", 1)[1].split(">", 1)[0]
rc = text.split("RC<", 1)[1].split(">", 1)[0]
if rc != "3":
    fail("warren shell exited %s, not 3" % rc)
if before != after:
    fail("terminal settings not restored: %s != %s" % (before, after))
if os.WEXITSTATUS(status) != 3:
    fail("sh exited %d" % os.WEXITSTATUS(status))
print("OK")
"#;

#[test]
fn warren_shell_through_a_real_pty_types_resizes_and_exits_with_the_code() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(warren_bin())
        .arg(d.data.path())
        .arg(&d.socket)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

fn start(d: &Daemon, id: &str, body: &str) -> i32 {
    let (status, answer) = http_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{id}/processes"),
        Some(body),
    )
    .unwrap();
    assert_eq!(status, 201, "{answer}");
    let process: serde_json::Value = serde_json::from_str(&answer).unwrap();
    process["pid"].as_i64().unwrap() as i32
}

async fn attach(
    d: &Daemon,
    route: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::UnixStream> {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(format!("ws://localhost{route}"), stream)
            .await
            .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    socket
}

/// Reads messages until `exit`: (binary bytes, text messages, exit message).
async fn read_to_exit(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
) -> (Vec<u8>, Vec<serde_json::Value>, serde_json::Value) {
    let (mut bytes, mut texts) = (Vec::new(), Vec::new());
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("no exit message in time")
            .expect("socket ended before exit")
            .unwrap();
        match message {
            Message::Binary(data) => bytes.extend_from_slice(&data),
            Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if value["type"] == "exit" {
                    return (bytes, texts, value);
                }
                texts.push(value);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn attach_websocket_carries_stdin_output_control_and_exit() {
    require_root!();
    let d = Daemon::start();
    let id = d.create(&[]);

    // A non-pty `cat`: stdin bytes come back as binary output; stderr comes
    // as an `output` text message; close_stdin ends it; exit carries the code.
    let pid = start(
        &d,
        &id,
        r#"{"shell": "cat; echo bye >&2; exit 5", "stdin": true}"#,
    );
    let route = format!("/v1/sandboxes/{id}/processes/{pid}/attach");
    let mut socket = attach(&d, &route).await;
    socket
        .send(Message::Binary(b"hello over ws\n".to_vec().into()))
        .await
        .unwrap();
    // Resizing a process without a pty is refused on the socket, which stays open.
    socket
        .send(Message::Text(
            r#"{"type":"resize","cols":80,"rows":24}"#.into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Text(r#"{"type":"close_stdin"}"#.into()))
        .await
        .unwrap();
    let (bytes, texts, exit) = read_to_exit(&mut socket).await;
    assert_eq!(String::from_utf8_lossy(&bytes), "hello over ws\n");
    assert_eq!(exit["exitCode"], 5, "{exit}");
    assert!(
        texts
            .iter()
            .any(|t| t["type"] == "output" && t["fd"] == 2 && t["base64"] == "YnllCg=="),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t["type"] == "error" && t["message"].as_str().unwrap().contains("pty")),
        "{texts:?}"
    );

    // Attaching again replays from an offset, then the exit.
    let mut again = attach(&d, &format!("{route}?from=6")).await;
    let (bytes, _, exit) = read_to_exit(&mut again).await;
    assert_eq!(String::from_utf8_lossy(&bytes), "over ws\n");
    assert_eq!(exit["exitCode"], 5);

    // A pty process of an unprivileged user: resize over the socket.
    let pid = start(
        &d,
        &id,
        r#"{"cmd": ["/bin/sh"], "user": "agent", "pty": {"cols": 50, "rows": 10}}"#,
    );
    let route = format!("/v1/sandboxes/{id}/processes/{pid}/attach");
    let mut socket = attach(&d, &route).await;
    socket
        .send(Message::Text(
            r#"{"type":"resize","cols":132,"rows":43}"#.into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Binary(
            b"stty size; echo uid=$(id -u); exit 7\n".to_vec().into(),
        ))
        .await
        .unwrap();
    let (bytes, _, exit) = read_to_exit(&mut socket).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("43 132"), "{text}");
    let uid = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid="))
        .and_then(|u| u.parse::<u32>().ok());
    assert!(uid.is_some_and(|u| u >= 1000), "{text}");
    assert_eq!(exit["exitCode"], 7);

    // REST resize: 409 without a pty, 404 for an unknown pid, 422 for a bad size.
    let sleeper = start(&d, &id, r#"{"cmd": ["sleep", "30"]}"#);
    let resize = |pid: i32, body: &str| {
        http_unix(
            &d.socket,
            "POST",
            &format!("/v1/sandboxes/{id}/processes/{pid}/resize"),
            Some(body),
        )
        .unwrap()
        .0
    };
    assert_eq!(resize(sleeper, r#"{"cols": 80, "rows": 24}"#), 409);
    assert_eq!(resize(999_999, r#"{"cols": 80, "rows": 24}"#), 404);
    assert_eq!(resize(sleeper, r#"{"cols": 0, "rows": 24}"#), 422);
    // A plain GET of /attach is not an upgrade.
    let (status, _) = http_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{id}/processes/{sleeper}/attach"),
        None,
    )
    .unwrap();
    assert_eq!(status, 400);

    // A client that vanishes mid-stream leaves the process running and
    // unblocked: it writes far more than any socket buffer, then exits.
    let chatty = start(
        &d,
        &id,
        r#"{"shell": "head -c 20000000 /dev/zero; echo done >&2"}"#,
    );
    let socket = attach(&d, &format!("/v1/sandboxes/{id}/processes/{chatty}/attach")).await;
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_unix(
            &d.socket,
            "GET",
            &format!("/v1/sandboxes/{id}/processes/{chatty}"),
            None,
        )
        .unwrap();
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        if p["status"] == "exited" {
            assert_eq!(p["exitCode"], 0, "{p}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
