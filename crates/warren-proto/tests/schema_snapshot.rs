//! Fails when a frame's JSON shape changes without a protocol version bump.

use warren_proto::{
    ExecDone, ExecRequest, Frame, OutputChunk, ProcessEntry, PtySize, SpawnRequest,
    PROTOCOL_VERSION,
};

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
            code: None,
        },
        Frame::Error {
            stream: Some(4),
            message: "no process 7".into(),
            code: Some("not_found".into()),
        },
        Frame::Spawn(SpawnRequest {
            stream: 5,
            argv: vec!["sleep".into(), "9".into()],
            cwd: Some("/workspace".into()),
            env: vec![("K".into(), "V".into())],
            user: Some("agent".into()),
            stdin: true,
            timeout_ms: Some(5000),
            tag: Some("server".into()),
            buffer_bytes: Some(65536),
            pty: None,
        }),
        Frame::Spawn(SpawnRequest {
            stream: 11,
            argv: vec!["bash".into(), "-l".into()],
            pty: Some(PtySize { cols: 80, rows: 24 }),
            ..SpawnRequest::default()
        }),
        Frame::Resize {
            stream: 12,
            pid: 8,
            cols: 120,
            rows: 40,
        },
        Frame::Spawned { stream: 5, pid: 7 },
        Frame::ProcessOutputRequest {
            stream: 6,
            pid: 7,
            from: 10,
            no_follow: true,
        },
        Frame::Ack { stream: 6 },
        Frame::Dropped {
            stream: 6,
            pid: 7,
            count: 3,
        },
        Frame::Output(OutputChunk {
            stream: 6,
            pid: 7,
            fd: 2,
            offset: 13,
            data: b"oops\n".to_vec(),
        }),
        Frame::OutputEnd {
            stream: 6,
            offset: 18,
        },
        Frame::Exited {
            stream: 6,
            pid: 7,
            exit_code: 143,
            timed_out: false,
        },
        Frame::Cancel { stream: 6 },
        Frame::Stdin {
            stream: 8,
            pid: 7,
            data: b"input".to_vec(),
            close: true,
        },
        Frame::Signal {
            stream: 9,
            pid: 7,
            signal: 15,
        },
        Frame::ListProcesses { stream: 10 },
        Frame::ProcessList {
            stream: 10,
            entries: vec![ProcessEntry {
                pid: 7,
                tag: Some("server".into()),
                argv: vec!["sleep".into(), "9".into()],
                running: false,
                exit_code: Some(143),
                timed_out: false,
                stdin: true,
                started_ms: 1_700_000_000_000,
                ended_ms: Some(1_700_000_001_000),
                output_bytes: 18,
                pty: false,
            }],
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
