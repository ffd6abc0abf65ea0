-- Identity: broker sessions (one per login, revocable by jti), pending
-- logins, one-time codes for the CLI, login failures and lockouts, and
-- break-glass accounts.

CREATE TABLE broker_sessions (
    jti           TEXT    PRIMARY KEY,
    user_email    TEXT    NOT NULL,
    subject       TEXT,                 -- IdP subject (sso, device) or account name (breakglass)
    groups_json   TEXT    NOT NULL,     -- JSON array
    amr_json      TEXT    NOT NULL,     -- JSON array
    mfa           BOOLEAN NOT NULL,
    method        TEXT    NOT NULL,     -- sso | device | breakglass
    source_ip     TEXT,
    user_agent    TEXT,
    created_at    BIGINT    NOT NULL,     -- microseconds since the epoch
    expires_at    BIGINT    NOT NULL,
    revoked_at    BIGINT,
    revoked_by    TEXT,
    revoke_reason TEXT
);
CREATE INDEX broker_sessions_user ON broker_sessions (user_email, created_at);

-- A browser or device login in flight. Secrets here (PKCE verifier,
-- device code) live minutes and are deleted when the login completes.
CREATE TABLE login_requests (
    id             TEXT    PRIMARY KEY, -- the OAuth state (browser) or request id (device)
    kind           TEXT    NOT NULL,    -- browser | device | web
    nonce          TEXT,
    pkce_verifier  TEXT,
    cli_redirect   TEXT,
    cli_challenge  TEXT,
    device_code    TEXT,
    interval_secs  BIGINT,
    next_poll_at   BIGINT,
    source_ip      TEXT,
    user_agent     TEXT,
    created_at     BIGINT    NOT NULL,
    expires_at     BIGINT    NOT NULL,
    used_at        BIGINT
);

-- One-time codes the broker hands the CLI through the browser redirect.
CREATE TABLE login_codes (
    code_hash      TEXT    PRIMARY KEY, -- SHA-256 of the code, hex
    cli_challenge  TEXT    NOT NULL,
    identity_json  TEXT    NOT NULL,    -- the validated identity
    source_ip      TEXT,
    user_agent     TEXT,
    created_at     BIGINT    NOT NULL,
    expires_at     BIGINT    NOT NULL,
    used_at        BIGINT
);

CREATE TABLE login_failures (
    id      BIGSERIAL PRIMARY KEY,
    scope   TEXT    NOT NULL,           -- user | ip
    key     TEXT    NOT NULL,
    ts      BIGINT    NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (scope, key, ts);

CREATE TABLE lockouts (
    scope   TEXT    NOT NULL,
    key     TEXT    NOT NULL,
    until   BIGINT    NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE breakglass_accounts (
    username        TEXT    PRIMARY KEY,
    password_hash   TEXT    NOT NULL,   -- argon2id PHC string
    totp_secret_enc BYTEA   NOT NULL,   -- AES-256-GCM under a key derived from the broker's keys
    groups_json     TEXT    NOT NULL,
    created_at      BIGINT    NOT NULL,
    disabled_at     BIGINT,
    last_totp_step  BIGINT    NOT NULL    -- a TOTP code is accepted once
);
