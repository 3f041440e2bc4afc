//! Fails when a frame's JSON shape changes without a protocol version bump.

use warren_proto::{ExecDone, ExecRequest, Frame, PROTOCOL_VERSION};

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: PROTOCOL_VERSION,
            software: Some("warren".into()),
        },
        Frame::Exec(ExecRequest {
            stream: 1,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            cwd: Some("/workspace".into()),
            env: vec![("K".into(), "V".into())],
            stdin: b"in".to_vec(),
            timeout_ms: Some(1000),
            user: Some("agent".into()),
        }),
        Frame::ExecDone(ExecDone {
            stream: 1,
            exit_code: 0,
            stdout: b"hi\n".to_vec(),
            stderr: Vec::new(),
            duration_ms: 2,
            timed_out: false,
        }),
        Frame::Ping { stream: 2 },
        Frame::Pong { stream: 2 },
        Frame::Error {
            stream: Some(3),
            message: "unsupported".into(),
        },
    ]
}

#[test]
fn schema_matches_checked_in_snapshot() {
    let mut text = String::new();
    for f in samples() {
        text.push_str(&serde_json::to_string(&f).unwrap());
        text.push('\n');
    }
    let path = format!(
        "{}/schema/v{}.jsonl",
        env!("CARGO_MANIFEST_DIR"),
        PROTOCOL_VERSION
    );
    if std::env::var_os("WARREN_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let saved = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        saved, text,
        "protocol frames differ from {path}. If this change is intended, bump PROTOCOL_VERSION \
         and write the new snapshot with WARREN_UPDATE_SCHEMA=1 cargo test -p warren-proto"
    );
}
