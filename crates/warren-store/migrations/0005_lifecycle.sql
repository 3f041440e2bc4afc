-- Lifecycle of a sandbox beyond its state: the snapshot or template it came
-- from, the warm pool holding it, its lifetime settings and deadlines, and
-- whether a suspend kept its memory. One JSON object (see `Lifecycle`).
ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';

-- Read-only captures of sandboxes' files. `layers` is the JSON array of
-- layer directories a sandbox created from it stacks (top first, its own
-- first), not counting the image's; `data` holds the defaults sandboxes
-- created from it inherit (env, workdir, user, default command, resources).
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT,
    kind TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    image TEXT NOT NULL,
    driver TEXT NOT NULL,
    layers TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Templates: a recipe (JSON), its hash, and the snapshot its build made.
CREATE TABLE templates (
    name TEXT PRIMARY KEY NOT NULL,
    recipe TEXT NOT NULL,
    recipe_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    snapshot_id TEXT,
    failure_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Warm pools, one per template.
CREATE TABLE pools (
    template TEXT PRIMARY KEY NOT NULL,
    size BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
