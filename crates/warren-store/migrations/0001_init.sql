-- Portable SQL: TEXT/BIGINT/DOUBLE PRECISION only; timestamps are RFC 3339 UTC
-- text with microseconds (fixed width, so they sort by time); maps are JSON text.
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT,
    state TEXT NOT NULL,
    image TEXT NOT NULL,
    driver TEXT NOT NULL,
    cpus DOUBLE PRECISION NOT NULL,
    memory_mb BIGINT NOT NULL,
    pids_limit BIGINT NOT NULL,
    env TEXT NOT NULL,
    workdir TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    failure_reason TEXT,
    runtime TEXT
);

CREATE INDEX sandboxes_state ON sandboxes (state);
CREATE INDEX sandboxes_created_at ON sandboxes (created_at);

-- An audit log: events outlive the sandbox row they describe.
CREATE TABLE sandbox_events (
    id INTEGER PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    at TEXT NOT NULL
);

CREATE INDEX sandbox_events_sandbox ON sandbox_events (sandbox_id, id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
