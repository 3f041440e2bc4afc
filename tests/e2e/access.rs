//! Access control against a real daemon: API key scopes, sandbox tokens
//! (scopes, other sandboxes, expiry, tampering, query parameter, the unix
//! socket), the create rate limit, and secrets (injected at create, and found
//! nowhere else: inspect, list, events, errors, `secret ls`, the daemon log,
//! the database).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::Daemon;

/// A response: status, raw head (status line and headers), body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {} {}", self.status, self.body))
    }
}

fn roundtrip<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> Reply {
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Reply {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn tcp(addr: &str, method: &str, path: &str, body: Option<&str>, bearer: Option<&str>) -> Reply {
    roundtrip(
        std::net::TcpStream::connect(addr).unwrap(),
        method,
        path,
        body,
        bearer,
    )
}

fn unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> Reply {
    roundtrip(
        std::os::unix::net::UnixStream::connect(socket).unwrap(),
        method,
        path,
        body,
        bearer,
    )
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// `warren keys create NAME --scope S…`: the key's secret.
fn make_key(d: &Daemon, name: &str, scopes: &[&str]) -> String {
    let mut args = vec!["keys", "create", name];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let key = d.warren_json(&args);
    let listed: Vec<String> = key["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let mut wanted: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    if wanted.is_empty() {
        wanted.push("admin".into());
    }
    wanted.sort();
    assert_eq!(listed, wanted);
    key["secret"].as_str().unwrap().to_owned()
}

fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
}

fn mint(addr: &str, key: &str, id: &str, scope: &str, ttl: i64) -> String {
    let reply = tcp(
        addr,
        "POST",
        &format!("/v1/sandboxes/{id}/tokens"),
        Some(&format!(r#"{{"scope":"{scope}","ttlSecs":{ttl}}}"#)),
        Some(key),
    );
    assert_status(&reply, 201, "mint a token");
    let token = reply.json();
    assert_eq!(token["sandboxId"], id);
    assert_eq!(token["scope"], scope);
    token["token"].as_str().unwrap().to_owned()
}

#[test]
fn key_scopes_and_sandbox_tokens() {
    require_root!();
    let addr = free_addr();
    let d = Daemon::start_with(Some(addr.clone()));
    let reader = make_key(&d, "reader", &["sandboxes:read"]);
    let writer = make_key(&d, "writer", &["sandboxes:write"]);
    let admin = make_key(&d, "admin", &[]);
    let keys_listed = d.warren(&["keys", "ls"]);
    let listed = String::from_utf8_lossy(&keys_listed.stdout);
    assert!(
        listed.contains("SCOPES") && listed.contains("sandboxes:read"),
        "{listed}"
    );

    // Key scopes.
    let refused = tcp(&addr, "POST", "/v1/sandboxes", Some("{}"), Some(&reader));
    assert_status(&refused, 403, "a read key creates");
    assert!(refused.body.contains("forbidden"), "{}", refused.body);
    assert_status(
        &tcp(&addr, "GET", "/v1/sandboxes", None, Some(&reader)),
        200,
        "a read key lists",
    );
    let created = tcp(&addr, "POST", "/v1/sandboxes", Some("{}"), Some(&writer));
    assert_status(&created, 201, "a write key creates");
    let a = created.json()["id"].as_str().unwrap().to_owned();
    let b = d.create(&[]);
    for (method, body) in [("GET", None), ("POST", Some(r#"{"name":"X","value":"v"}"#))] {
        assert_status(
            &tcp(&addr, method, "/v1/secrets", body, Some(&writer)),
            403,
            "a write key manages secrets",
        );
    }
    assert_status(
        &tcp(&addr, "GET", "/v1/secrets", None, Some(&admin)),
        200,
        "an admin key lists secrets",
    );

    // Naming secrets at create needs an admin key: the sandbox can read them.
    assert_status(
        &tcp(
            &addr,
            "POST",
            "/v1/secrets",
            Some(r#"{"name":"ADMIN_ONLY","value":"admin-only-value"}"#),
            Some(&admin),
        ),
        201,
        "an admin key sets a secret",
    );
    let with_secret = Some(r#"{"secrets":["ADMIN_ONLY"]}"#);
    let refused = tcp(&addr, "POST", "/v1/sandboxes", with_secret, Some(&writer));
    assert_status(&refused, 403, "a write key names a secret");
    assert!(refused.body.contains("forbidden"), "{}", refused.body);
    assert!(
        refused.body.contains("naming secrets needs an admin key"),
        "{}",
        refused.body
    );
    assert!(
        !refused.body.contains("admin-only-value"),
        "{}",
        refused.body
    );
    let made = tcp(&addr, "POST", "/v1/sandboxes", with_secret, Some(&admin));
    assert_status(&made, 201, "an admin key names a secret");
    let c = made.json()["id"].as_str().unwrap().to_owned();
    let echoed = tcp(
        &addr,
        "POST",
        &format!("/v1/sandboxes/{c}/exec"),
        Some(r#"{"shell":"echo $ADMIN_ONLY"}"#),
        Some(&writer),
    );
    assert_status(&echoed, 200, "exec in the admin's sandbox");
    assert_eq!(echoed.json()["stdout"], "admin-only-value\n");
    assert_status(
        &tcp(
            &addr,
            "DELETE",
            &format!("/v1/sandboxes/{c}"),
            None,
            Some(&writer),
        ),
        204,
        "delete the sandbox with a secret",
    );
    assert_status(
        &tcp(
            &addr,
            "POST",
            &format!("/v1/sandboxes/{a}/tokens"),
            Some(r#"{"scope":"read"}"#),
            Some(&reader),
        ),
        403,
        "a read key mints",
    );

    // Minting: bad ttl, unknown sandbox.
    for ttl in ["0", "86401"] {
        let reply = tcp(
            &addr,
            "POST",
            &format!("/v1/sandboxes/{a}/tokens"),
            Some(&format!(r#"{{"scope":"read","ttlSecs":{ttl}}}"#)),
            Some(&writer),
        );
        assert_status(&reply, 422, "ttl out of range");
        assert!(reply.body.contains("ttlSecs"), "{}", reply.body);
    }
    assert_status(
        &tcp(
            &addr,
            "POST",
            "/v1/sandboxes/nosuchsandbox/tokens",
            Some(r#"{"scope":"read"}"#),
            Some(&writer),
        ),
        404,
        "token for an unknown sandbox",
    );

    // A read token for A.
    let exec_a = format!("/v1/sandboxes/{a}/exec");
    let wrote = tcp(
        &addr,
        "POST",
        &exec_a,
        Some(r#"{"shell":"echo hello-file > /tmp/hello"}"#),
        Some(&writer),
    );
    assert_status(&wrote, 200, "write a file");
    let read_token = mint(&addr, &writer, &a, "read", 600);
    let got = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}"),
        None,
        Some(&read_token),
    );
    assert_status(&got, 200, "read token GETs its sandbox");
    assert_eq!(got.json()["id"], a.as_str());
    let file = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}/files?path=/tmp/hello"),
        None,
        Some(&read_token),
    );
    assert_status(&file, 200, "read token reads a file");
    assert!(file.body.contains("hello-file"), "{}", file.body);
    let exec_body = Some(r#"{"cmd":["echo","token-exec"]}"#);
    for (method, path, body) in [
        ("POST", exec_a.as_str(), exec_body),
        ("GET", &format!("/v1/sandboxes/{b}"), None),
        ("GET", "/v1/sandboxes", None),
        ("GET", "/v1/secrets", None),
        ("GET", "/v1/images", None),
        ("DELETE", &format!("/v1/sandboxes/{a}"), None),
        (
            "POST",
            &format!("/v1/sandboxes/{a}/tokens"),
            Some(r#"{"scope":"exec"}"#),
        ),
    ] {
        let reply = tcp(&addr, method, path, body, Some(&read_token));
        assert_status(&reply, 403, &format!("read token: {method} {path}"));
        assert!(reply.body.contains("forbidden"), "{}", reply.body);
    }

    // An exec token for A.
    let exec_token = mint(&addr, &writer, &a, "exec", 600);
    let ran = tcp(&addr, "POST", &exec_a, exec_body, Some(&exec_token));
    assert_status(&ran, 200, "exec token execs");
    assert_eq!(ran.json()["stdout"], "token-exec\n");
    for (method, path) in [
        ("POST", format!("/v1/sandboxes/{b}/exec")),
        ("GET", format!("/v1/sandboxes/{b}")),
        ("GET", "/v1/sandboxes".to_owned()),
        ("GET", "/v1/secrets".to_owned()),
        ("GET", "/v1/images".to_owned()),
    ] {
        let reply = tcp(&addr, method, &path, exec_body, Some(&exec_token));
        assert_status(&reply, 403, &format!("exec token: {method} {path}"));
    }

    // Tampering: flip one character of the signature.
    let mut tampered = exec_token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let reply = tcp(&addr, "POST", &exec_a, exec_body, Some(&tampered));
    assert_status(&reply, 401, "tampered token");

    // Query parameter: accepted on the event stream route, not elsewhere.
    let events = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}/events?token={read_token}"),
        None,
        None,
    );
    assert_status(&events, 200, "query token on events");
    assert!(events.body.contains("running"), "{}", events.body);
    let started = tcp(
        &addr,
        "POST",
        &format!("/v1/sandboxes/{a}/processes"),
        Some(r#"{"cmd":["echo","out-by-query"]}"#),
        Some(&writer),
    );
    assert!(
        matches!(started.status, 200 | 201),
        "start: {}",
        started.body
    );
    let pid = started.json()["pid"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let output = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}/processes/{pid}/output?follow=false&token={read_token}"),
        None,
        None,
    );
    assert_status(&output, 200, "query token on process output");
    assert!(output.body.contains("out-by-query"), "{}", output.body);
    let reply = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}?token={read_token}"),
        None,
        None,
    );
    assert_status(&reply, 401, "query token on a normal route");
    // API keys never go in the URL, not even where tokens may.
    for path in [
        format!("/v1/sandboxes/{a}/events?token={writer}"),
        format!("/v1/sandboxes/{a}?token={writer}"),
        format!("/v1/sandboxes/{a}/ports/8080/?token={writer}"),
    ] {
        let reply = tcp(&addr, "GET", &path, None, None);
        assert_status(&reply, 401, &format!("an API key in the URL: {path}"));
        assert!(
            reply.body.contains("Authorization"),
            "{path}: {}",
            reply.body
        );
    }
    // A `token` that is not Warren's (an app's own, like Jupyter's) is left
    // alone: not a bad credential.
    let reply = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}?token=notwarrens123"),
        None,
        Some(&writer),
    );
    assert_status(&reply, 200, "a foreign token query parameter");
    // Anonymous TCP gets nothing but public paths.
    assert_status(
        &tcp(&addr, "GET", &format!("/v1/sandboxes/{a}"), None, None),
        401,
        "anonymous",
    );
    assert_status(&tcp(&addr, "GET", "/healthz", None, None), 200, "healthz");

    // The unix socket holds a token to its scope too.
    let reply = unix(&d.socket, "POST", &exec_a, exec_body, Some(&read_token));
    assert_status(&reply, 403, "read token over the unix socket");
    let reply = unix(&d.socket, "GET", "/v1/sandboxes", None, Some(&read_token));
    assert_status(&reply, 403, "read token lists over the unix socket");
    let reply = unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{a}"),
        None,
        Some(&read_token),
    );
    assert_status(&reply, 200, "read token reads over the unix socket");
    let out = d.warren(&["--api-key", &read_token, "exec", &a, "--", "true"]);
    assert!(!out.status.success(), "the CLI with a read token execs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the CLI can mint and use a token.
    let out = d.warren(&["token", &a, "--scope", "exec", "--ttl", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(cli_token.starts_with("wst_"), "{cli_token}");
    let out = d.warren(&["--api-key", &cli_token, "exec", &a, "--", "echo", "via-cli"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n");
    let token_json = d.warren_json(&["token", &a, "--scope", "ports"]);
    assert_eq!(token_json["scope"], "ports");
    assert!(token_json["expiresAt"].is_string());

    // Expiry.
    let short = mint(&addr, &writer, &a, "read", 1);
    std::thread::sleep(Duration::from_secs(2));
    let reply = tcp(
        &addr,
        "GET",
        &format!("/v1/sandboxes/{a}"),
        None,
        Some(&short),
    );
    assert_status(&reply, 401, "expired token");
    assert!(reply.body.contains("token expired"), "{}", reply.body);

    // The keys live in <data>/access with private modes.
    use std::os::unix::fs::PermissionsExt;
    let dir = d.data_dir().join("access");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in ["token.key", "secrets.key"] {
        let meta = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        assert_eq!(meta.len(), 32, "{file}");
    }
}

#[test]
fn create_rate_limit_answers_429_with_retry_after() {
    require_root!();
    let addr = free_addr();
    let d = Daemon::start_with_serve_args(&["--listen", &addr, "--create-rate-limit", "2"]);
    let key = make_key(&d, "ci", &[]);
    let mut first = String::new();
    for n in 0..2 {
        let reply = tcp(&addr, "POST", "/v1/sandboxes", Some("{}"), Some(&key));
        assert_status(&reply, 201, &format!("create {n}"));
        first = reply.json()["id"].as_str().unwrap().to_owned();
    }
    let reply = tcp(&addr, "POST", "/v1/sandboxes", Some("{}"), Some(&key));
    assert_status(&reply, 429, "third create");
    assert!(reply.body.contains("rate_limited"), "{}", reply.body);
    let retry: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", reply.head))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // A fork creates too.
    let fork = tcp(
        &addr,
        "POST",
        &format!("/v1/sandboxes/{first}/fork"),
        Some("{}"),
        Some(&key),
    );
    assert_status(&fork, 429, "fork over the limit");
    assert!(fork.header("retry-after").is_some(), "{}", fork.head);
    // A fork of more children than the limit allows in a minute could never
    // pass: refused as invalid, not "retry later".
    let fork = tcp(
        &addr,
        "POST",
        &format!("/v1/sandboxes/{first}/fork"),
        Some(r#"{"count":3}"#),
        Some(&key),
    );
    assert_status(&fork, 422, "fork of more children than the limit");
    assert!(fork.body.contains("invalid_value"), "{}", fork.body);
    assert!(
        fork.body
            .contains("count 3 exceeds the create rate limit of 2 per minute"),
        "{}",
        fork.body
    );
    assert!(fork.header("retry-after").is_none(), "{}", fork.head);
    // Another key has its own bucket; local callers are not limited.
    let other = make_key(&d, "other", &["sandboxes:write"]);
    assert_status(
        &tcp(&addr, "POST", "/v1/sandboxes", Some("{}"), Some(&other)),
        201,
        "another key",
    );
    d.create(&[]);
    d.create(&[]);
}

#[test]
fn secrets_reach_the_sandbox_and_nowhere_else() {
    require_root!();
    let d = Daemon::start();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let value = format!("s3cr3t-{}-{nanos}", std::process::id());
    let piped_value = format!("piped-{nanos}-value");

    // Set one with --value and one from stdin.
    let out = d.warren(&["secret", "set", "MY_TOKEN", "--value", &value]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(harness::warren_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["--no-autostart", "secret", "set", "PIPED"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{piped_value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut outputs: Vec<String> = vec![
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ];

    // Injected at create, by name.
    let id = d.create(&[
        "--secret", "MY_TOKEN", "--secret", "PIPED", "--secret", "MY_TOKEN",
    ]);
    let out = d.warren(&["exec", &id, "--", "sh", "-c", "echo $MY_TOKEN; echo $PIPED"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{value}\n{piped_value}\n")
    );

    // Unknown names are refused, naming them.
    let out = d.warren(&[
        "create",
        "--secret",
        "MY_TOKEN",
        "--secret",
        "NO_SUCH_SECRET",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("NO_SUCH_SECRET"), "{stderr}");
    outputs.push(stderr);
    let reply = unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"secrets":["NO_SUCH_SECRET"]}"#),
        None,
    );
    assert_status(&reply, 422, "unknown secret");
    outputs.push(reply.body);

    // Bad secret requests carrying the value: errors never echo it.
    let bad_name = unix(
        &d.socket,
        "POST",
        "/v1/secrets",
        Some(&format!(r#"{{"name":"1BAD","value":"{value}"}}"#)),
        None,
    );
    assert_status(&bad_name, 422, "bad secret name");
    assert!(bad_name.body.contains("name"), "{}", bad_name.body);
    let bad_body = unix(
        &d.socket,
        "POST",
        "/v1/secrets",
        Some(&format!(r#""{value}""#)),
        None,
    );
    assert_status(&bad_body, 400, "a string body");
    let too_big = unix(
        &d.socket,
        "POST",
        "/v1/secrets",
        Some(&format!(
            r#"{{"name":"BIG","value":"{}"}}"#,
            "x".repeat(70_000)
        )),
        None,
    );
    assert_status(&too_big, 413, "a value over 64 KiB");
    outputs.extend([bad_name.body, bad_body.body]);

    // Everywhere a value could leak.
    for args in [
        vec!["inspect", id.as_str()],
        vec!["--json", "inspect", id.as_str()],
        vec!["--json", "ls"],
        vec!["ls"],
        vec!["--json", "events", id.as_str()],
        vec!["secret", "ls"],
        vec!["--json", "secret", "ls"],
    ] {
        let out = d.warren(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).into());
    }
    let inspect = d.warren_json(&["inspect", &id]);
    assert_eq!(inspect["secrets"], serde_json::json!(["MY_TOKEN", "PIPED"]));
    let listed = d.warren_json(&["secret", "ls"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["MY_TOKEN", "PIPED"]);
    assert!(listed[0].get("value").is_none());
    outputs.push(unix(&d.socket, "GET", &format!("/v1/sandboxes/{id}"), None, None).body);
    outputs.push(
        unix(
            &d.socket,
            "GET",
            &format!("/v1/sandboxes/{id}/events"),
            None,
            None,
        )
        .body,
    );
    outputs.push(unix(&d.socket, "GET", "/v1/secrets", None, None).body);
    let log = d.log();
    assert!(
        log.contains("/v1/secrets"),
        "the daemon logs requests: {log}"
    );
    outputs.push(log);
    for entry in std::fs::read_dir(d.data_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("warren.db") {
            let bytes = std::fs::read(entry.path()).unwrap();
            outputs.push(String::from_utf8_lossy(&bytes).into());
        }
    }
    for (n, text) in outputs.iter().enumerate() {
        for secret in [&value, &piped_value] {
            assert!(
                !text.contains(secret.as_str()),
                "output {n} leaks a secret value: {text}"
            );
        }
    }

    // Replace, then remove.
    let out = d.warren(&["secret", "set", "MY_TOKEN", "--value", "second"]);
    assert!(out.status.success());
    let again = d.create(&["--secret", "MY_TOKEN"]);
    let out = d.warren(&["exec", &again, "--", "sh", "-c", "echo $MY_TOKEN"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second\n");
    let out = d.warren(&["secret", "rm", "MY_TOKEN"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.warren(&["secret", "rm", "MY_TOKEN"]);
    assert!(!out.status.success(), "removing twice");
    assert!(String::from_utf8_lossy(&out.stderr).contains("MY_TOKEN"));
}
