-- SQLite, schema 4: the `admin` role (SQLite changes a CHECK only by rebuilding the table), what each
-- agent last reported (heartbeat per host, latest state per host and pull) for the rollout view.
CREATE TABLE tokens_new (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('builder', 'host', 'admin')),
    secret_hash TEXT NOT NULL UNIQUE,
    created     INTEGER NOT NULL,
    revoked_at  INTEGER NULL,
    builder_key BLOB NULL
);
INSERT INTO tokens_new SELECT * FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
CREATE TABLE host_reports (
    name           TEXT PRIMARY KEY,
    address        TEXT NOT NULL,
    version        TEXT NOT NULL,
    cache_bytes    INTEGER NOT NULL,
    cache_budget   INTEGER NOT NULL,
    cert_not_after INTEGER NOT NULL,
    last_seen      REAL NOT NULL
);
CREATE TABLE pull_reports (
    host     TEXT NOT NULL,
    ref      TEXT NOT NULL,
    report   BLOB NOT NULL,
    state    TEXT NOT NULL,
    image_id TEXT NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (host, ref)
);
CREATE INDEX pull_reports_ref ON pull_reports(ref);
