//! `docs/openapi.json` must match the code, so SDKs and docs never drift.
// Test helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[test]
fn openapi_document_is_committed_and_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let mut current = serde_json::to_string_pretty(&warren_server::openapi()).unwrap();
    current.push('\n');
    if std::env::var_os("WARREN_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "docs/openapi.json is stale: run `WARREN_UPDATE_OPENAPI=1 cargo test -p warren-server openapi`"
    );
}

#[test]
fn openapi_document_describes_the_routes() {
    let doc = serde_json::to_value(warren_server::openapi()).unwrap();
    for path in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/exec",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["CreateSandboxRequest"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
}
