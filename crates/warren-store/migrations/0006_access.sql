-- API key scopes: a comma-separated list of `admin`, `sandboxes:write`,
-- `sandboxes:read`. Keys made before scopes existed stay admin.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin';

-- Secrets injected by name into sandboxes' environments. The value is
-- sealed by the daemon (base64 of nonce || ciphertext); the store never
-- sees the plaintext.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY NOT NULL,
    value_sealed TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
