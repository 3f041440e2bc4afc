//! Sandbox events and the lock-free lifecycle writes of the timeout checker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{SubsecRound, Utc};
use warren_api::{ResolvedResources, SandboxState};
use warren_store::{Lifecycle, SandboxRecord, Store};

fn record(id: &str, lifecycle: Lifecycle) -> SandboxRecord {
    let at = Utc::now().trunc_subsecs(6);
    SandboxRecord {
        id: id.to_owned(),
        name: None,
        state: SandboxState::Running,
        image: "host".to_owned(),
        driver: "namespace".to_owned(),
        resources: ResolvedResources {
            cpus: 0.5,
            memory_mb: 256,
            pids_limit: 64,
            disk_mb: None,
        },
        env: Default::default(),
        workdir: "/workspace".to_owned(),
        metadata: Default::default(),
        created_at: at,
        updated_at: at,
        failure_reason: None,
        runtime: None,
        user: None,
        default_command: None,
        lifecycle,
    }
}

#[tokio::test]
async fn appended_events_read_back_equal_and_filter_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let first = store
        .append_event("sb1", "creating", &serde_json::json!({}))
        .await
        .unwrap();
    let second = store
        .append_event("sb1", "running", &serde_json::json!({ "auto": true }))
        .await
        .unwrap();
    store
        .append_event("sb2", "creating", &serde_json::json!({}))
        .await
        .unwrap();
    // What append returns is exactly what a replay reads (microseconds).
    assert_eq!(
        store.list_events("sb1").await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        store.list_events_after("sb1", first.id).await.unwrap(),
        std::slice::from_ref(&second)
    );
    assert!(store
        .list_events_after("sb1", second.id)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn activity_is_written_alone_and_timed_sandboxes_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let timed = Lifecycle {
        idle_timeout_secs: Some(60),
        auto_resume: true,
        ..Lifecycle::default()
    };
    store.insert_sandbox(&record("idle", timed)).await.unwrap();
    store
        .insert_sandbox(&record(
            "deadline",
            Lifecycle {
                timeout_secs: Some(60),
                ..Lifecycle::default()
            },
        ))
        .await
        .unwrap();
    store
        .insert_sandbox(&record("untimed", Lifecycle::default()))
        .await
        .unwrap();
    let mut stopped = record(
        "stopped",
        Lifecycle {
            timeout_secs: Some(60),
            ..Lifecycle::default()
        },
    );
    stopped.state = SandboxState::Failed;
    store.insert_sandbox(&stopped).await.unwrap();

    let mut ids = store.timed_sandbox_ids().await.unwrap();
    ids.sort();
    assert_eq!(ids, ["deadline", "idle"]);

    let at = Utc::now().trunc_subsecs(6);
    store.set_last_activity("idle", at).await.unwrap();
    let lifecycle = store.get_sandbox("idle").await.unwrap().unwrap().lifecycle;
    assert_eq!(lifecycle.last_activity_at, Some(at));
    // The rest of the lifecycle is untouched.
    assert_eq!(lifecycle.idle_timeout_secs, Some(60));
    assert!(lifecycle.auto_resume);
    // A missing sandbox is not an error.
    store.set_last_activity("nosuch", at).await.unwrap();
}
