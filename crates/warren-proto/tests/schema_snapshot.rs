//! Fails when a frame's JSON shape changes without a protocol version bump.

use warren_proto::{
    ChangeKind, EntryKind, ExecDone, ExecRequest, FileChange, FileEntry, FileFindRequest,
    FileGrepRequest, FileListRequest, FileMkdirRequest, FilePathRequest, FileReadRequest,
    FileRemoveRequest, FileRenameRequest, FileWatchRequest, FileWriteRequest, Frame, GrepLine,
    OutputChunk, ProcessEntry, PtySize, SpawnRequest, TarUploadRequest, PROTOCOL_VERSION,
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
        Frame::FileStat(FilePathRequest {
            stream: 20,
            path: "/workspace/a.txt".into(),
            user: Some("agent".into()),
        }),
        Frame::FileList(FileListRequest {
            stream: 21,
            path: "/workspace".into(),
            depth: 2,
            user: None,
        }),
        Frame::FileRead(FileReadRequest {
            stream: 22,
            path: "/workspace/a.txt".into(),
            offset: 10,
            len: Some(100),
            user: None,
        }),
        Frame::FileWrite(FileWriteRequest {
            stream: 23,
            path: "/workspace/a.txt".into(),
            mode: Some(0o600),
            max_bytes: Some(1 << 20),
            user: Some("agent".into()),
        }),
        Frame::FileMkdir(FileMkdirRequest {
            stream: 24,
            path: "/workspace/d/e".into(),
            mode: Some(0o700),
            user: None,
        }),
        Frame::FileRename(FileRenameRequest {
            stream: 25,
            from: "/workspace/a.txt".into(),
            to: "/workspace/b.txt".into(),
            overwrite: true,
            user: None,
        }),
        Frame::FileRemove(FileRemoveRequest {
            stream: 26,
            path: "/workspace/d".into(),
            recursive: true,
            user: None,
        }),
        Frame::FileFind(FileFindRequest {
            stream: 27,
            root: "/workspace".into(),
            glob: "**/*.rs".into(),
            max_results: 100,
            user: None,
        }),
        Frame::FileGrep(FileGrepRequest {
            stream: 28,
            root: "/workspace".into(),
            pattern: "fn main".into(),
            glob: Some("*.rs".into()),
            ignore_case: true,
            max_matches: 50,
            user: None,
        }),
        Frame::TarDownload(FilePathRequest {
            stream: 29,
            path: "/workspace/d".into(),
            user: None,
        }),
        Frame::TarUpload(TarUploadRequest {
            stream: 30,
            dir: "/workspace/up".into(),
            max_bytes: Some(1 << 30),
            user: Some("agent".into()),
        }),
        Frame::FileWatch(FileWatchRequest {
            stream: 31,
            path: "/workspace".into(),
            recursive: true,
            user: None,
        }),
        Frame::FileInfo {
            stream: 20,
            entry: FileEntry {
                path: "/workspace/link".into(),
                kind: EntryKind::Symlink,
                size: 5,
                mode: 0o777,
                uid: 1000,
                gid: 1000,
                mtime: 1_700_000_000,
                link_target: Some("a.txt".into()),
            },
        },
        Frame::FileEntries {
            stream: 21,
            entries: vec![FileEntry {
                path: "/workspace/d".into(),
                kind: EntryKind::Dir,
                size: 4096,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                link_target: None,
            }],
            truncated: true,
        },
        Frame::GrepMatches {
            stream: 28,
            matches: vec![GrepLine {
                path: "/workspace/main.rs".into(),
                line: 3,
                text: "fn main() {".into(),
            }],
            truncated: false,
        },
        Frame::TarUnpacked {
            stream: 30,
            entries: 3,
            bytes: 1234,
        },
        Frame::FileChanged(FileChange {
            stream: 31,
            kind: ChangeKind::Renamed,
            path: "/workspace/b".into(),
            from: Some("/workspace/a".into()),
            is_dir: false,
        }),
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
