//! End-to-end: the REST API of a real daemon, over its unix socket and over
//! TCP with API keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "harness/mod.rs"]
mod harness;

use harness::{http_tcp, http_unix, Daemon};

#[test]
fn bad_requests_get_the_right_status_and_error_body() {
    require_root!();
    let d = Daemon::start();
    let s = &d.socket;
    let (status, body) = http_unix(s, "POST", "/v1/sandboxes", Some("{not json")).unwrap();
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "invalid_request");

    let (status, body) = http_unix(
        s,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"resources":{"memoryMb":0}}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("resources.memoryMb"), "{body}");
    let (status, body) = http_unix(
        s,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"resources":{"cpus":-1}}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("cpus"), "{body}");
    let (status, body) =
        http_unix(s, "POST", "/v1/sandboxes", Some(r#"{"image":"nope"}"#)).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("image"), "{body}");

    let (status, _) = http_unix(s, "GET", "/v1/sandboxes/doesnotexist", None).unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_unix(
        s,
        "POST",
        "/v1/sandboxes/doesnotexist/exec",
        Some(r#"{"cmd":["true"]}"#),
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_unix(s, "GET", "/v1/sandboxes/..%2f..%2fetc", None).unwrap();
    assert_eq!(status, 404);

    // A real sandbox: exec with a shell string, then on a deleted sandbox.
    let (status, body) = http_unix(s, "POST", "/v1/sandboxes", Some("{}")).unwrap();
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http_unix(
        s,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(r#"{"shell":"echo $((6*7))"}"#),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let result: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["stdout"], "42\n");
    assert_eq!(result["exitCode"], 0);
    let (status, _) = http_unix(
        s,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(r#"{"cmd":[]}"#),
    )
    .unwrap();
    assert_eq!(status, 422);
    let (status, _) = http_unix(s, "DELETE", &format!("/v1/sandboxes/{id}"), None).unwrap();
    assert!(status == 204 || status == 200);
    let (status, _) = http_unix(
        s,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(r#"{"cmd":["true"]}"#),
    )
    .unwrap();
    assert!(
        status == 404 || status == 409,
        "exec on a deleted sandbox gave {status}"
    );

    // The daemon survived all of it.
    let (status, _) = http_unix(s, "GET", "/healthz", None).unwrap();
    assert_eq!(status, 200);
    let (status, body) = http_unix(s, "GET", "/openapi.json", None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("/v1/sandboxes/{id}/exec"));
}

#[test]
fn socket_is_private_to_root() {
    require_root!();
    let d = Daemon::start();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn tcp_requires_a_valid_api_key() {
    require_root!();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(Some(addr.clone()));
    let key = d.warren_json(&["keys", "create", "ci"]);
    let secret = key["secret"].as_str().unwrap().to_string();

    let (status, body) = http_tcp(&addr, "GET", "/v1/sandboxes", None, None).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"));
    let (status, _) = http_tcp(&addr, "GET", "/v1/sandboxes", None, Some("wrn_0000")).unwrap();
    assert_eq!(status, 401);
    let (status, body) = http_tcp(&addr, "GET", "/v1/sandboxes", None, Some(&secret)).unwrap();
    assert_eq!(status, 200, "{body}");

    // The CLI over TCP with the key.
    let out = std::process::Command::new(harness::warren_bin())
        .args([
            "--no-autostart",
            "--url",
            &format!("http://{addr}"),
            "--api-key",
            &secret,
            "run",
            "--",
            "echo",
            "over tcp",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tcp\n");

    // Keys are stored hashed: the secret is not in the database file.
    let db = std::fs::read(d.data_dir().join("warren.db")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // A removed key stops working.
    d.warren_json(&["keys", "rm", "ci"]);
    let (status, _) = http_tcp(&addr, "GET", "/v1/sandboxes", None, Some(&secret)).unwrap();
    assert_eq!(status, 401);
}
