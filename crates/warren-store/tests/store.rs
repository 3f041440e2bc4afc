use std::collections::BTreeMap;

use chrono::{SubsecRound, Utc};
use warren_api::{ResolvedResources, SandboxState};
use warren_store::{SandboxRecord, Store, StoreError};

fn record(id: &str, offset_ms: i64) -> SandboxRecord {
    let at = (Utc::now() + chrono::Duration::milliseconds(offset_ms)).trunc_subsecs(6);
    SandboxRecord {
        id: id.to_owned(),
        name: Some(format!("name-{id}")),
        state: SandboxState::Creating,
        image: "host".to_owned(),
        driver: "namespace".to_owned(),
        resources: ResolvedResources {
            cpus: 0.5,
            memory_mb: 256,
            pids_limit: 64,
            disk_mb: Some(1024),
        },
        env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        workdir: "/workspace".to_owned(),
        metadata: BTreeMap::from([("team".to_owned(), "x".to_owned())]),
        created_at: at,
        updated_at: at,
        failure_reason: None,
        runtime: None,
        user: None,
        default_command: None,
        lifecycle: Default::default(),
    }
}

#[tokio::test]
async fn sandbox_round_trip_and_updates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let rec = record("aaaaaaaaaaaaaaaaaaa1", 0);
    store.insert_sandbox(&rec).await.unwrap();
    assert_eq!(store.get_sandbox(&rec.id).await.unwrap(), Some(rec.clone()));
    assert!(matches!(
        store.insert_sandbox(&rec).await,
        Err(StoreError::DuplicateSandbox(_))
    ));

    store
        .set_runtime(&rec.id, Some(r#"{"pid":1}"#))
        .await
        .unwrap();
    store
        .set_state(&rec.id, SandboxState::Failed, Some("boom"))
        .await
        .unwrap();
    let got = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Failed);
    assert_eq!(got.failure_reason.as_deref(), Some("boom"));
    assert_eq!(got.runtime.as_deref(), Some(r#"{"pid":1}"#));
    assert!(got.updated_at >= rec.updated_at);

    store
        .set_state(&rec.id, SandboxState::Running, None)
        .await
        .unwrap();
    let got = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.failure_reason, None);

    assert!(matches!(
        store
            .set_state("missing", SandboxState::Running, None)
            .await,
        Err(StoreError::SandboxNotFound(_))
    ));

    store.delete_sandbox(&rec.id).await.unwrap();
    assert_eq!(store.get_sandbox(&rec.id).await.unwrap(), None);
    store.delete_sandbox(&rec.id).await.unwrap();
}

#[tokio::test]
async fn default_command_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut rec = record("cmd00000000000000000", 0);
    rec.default_command = Some(vec!["sh".into(), "-c".into(), "echo \"hi\"".into()]);
    store.insert_sandbox(&rec).await.unwrap();
    let got = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.default_command, rec.default_command);
}

#[tokio::test]
async fn list_is_newest_first_and_skips_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let old = record("old00000000000000000", -2000);
    let new = record("new00000000000000000", 0);
    let gone = record("gone0000000000000000", 1000);
    for rec in [&old, &new, &gone] {
        store.insert_sandbox(rec).await.unwrap();
    }
    store
        .set_state(&gone.id, SandboxState::Deleted, None)
        .await
        .unwrap();
    let ids: Vec<String> = store
        .list_sandboxes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![new.id, old.id]);
}

#[tokio::test]
async fn events_are_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store
        .record_event("s1", "creating", &serde_json::json!({}))
        .await
        .unwrap();
    store
        .record_event("s1", "failed", &serde_json::json!({"reason": "x"}))
        .await
        .unwrap();
    store
        .record_event("s2", "creating", &serde_json::json!({}))
        .await
        .unwrap();
    let events = store.list_events("s1").await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["creating", "failed"]);
    assert!(events[0].id < events[1].id);
    assert_eq!(events[1].data["reason"], "x");
}

#[tokio::test]
async fn api_keys_create_verify_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let key = store.create_api_key("ci").await.unwrap();
    assert!(key.secret.starts_with("wrn_"));
    assert_eq!(key.secret.len(), 4 + 64);
    assert!(key.secret[4..].chars().all(|c| c.is_ascii_hexdigit()));
    assert!(key.id.starts_with("key_"));
    assert_eq!(key.id.len(), 16);
    assert!(key.id[4..]
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));

    let info = store.verify_api_key(&key.secret).await.unwrap().unwrap();
    assert_eq!(
        (info.id.as_str(), info.name.as_str()),
        (key.id.as_str(), "ci")
    );
    assert_eq!(info.created_at, key.created_at);
    assert_eq!(store.verify_api_key("wrn_wrong").await.unwrap(), None);
    let mut almost = key.secret.clone();
    almost.pop();
    almost.push('x');
    assert_eq!(store.verify_api_key(&almost).await.unwrap(), None);

    assert!(matches!(
        store.create_api_key("ci").await,
        Err(StoreError::DuplicateKeyName(_))
    ));
    let other = store.create_api_key("laptop").await.unwrap();
    assert_ne!(other.secret, key.secret);
    let names: Vec<String> = store
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["ci", "laptop"]);

    assert!(store.delete_api_key("ci").await.unwrap());
    assert!(!store.delete_api_key("ci").await.unwrap());
    assert_eq!(store.verify_api_key(&key.secret).await.unwrap(), None);
    assert!(store.delete_api_key(&other.id).await.unwrap());
    assert!(store.list_api_keys().await.unwrap().is_empty());
}

#[tokio::test]
async fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let rec = record("keep0000000000000000", 0);
    let secret = {
        let store = Store::open(dir.path()).await.unwrap();
        store.insert_sandbox(&rec).await.unwrap();
        store.create_api_key("k").await.unwrap().secret
    };
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.get_sandbox(&rec.id).await.unwrap(), Some(rec));
    assert!(store.verify_api_key(&secret).await.unwrap().is_some());
    assert!(dir.path().join("warren.db").exists());
}
