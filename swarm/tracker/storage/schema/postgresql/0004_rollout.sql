-- PostgreSQL, schema 4: the `admin` role, what each agent last reported (heartbeat per host, latest
-- state per host and pull) for the rollout view.
ALTER TABLE tokens DROP CONSTRAINT tokens_role_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('builder', 'host', 'admin'));
CREATE TABLE host_reports (
    name           TEXT PRIMARY KEY,
    address        TEXT NOT NULL,
    version        TEXT NOT NULL,
    cache_bytes    BIGINT NOT NULL,
    cache_budget   BIGINT NOT NULL,
    cert_not_after BIGINT NOT NULL,
    last_seen      DOUBLE PRECISION NOT NULL
);
CREATE TABLE pull_reports (
    host     TEXT NOT NULL,
    ref      TEXT NOT NULL,
    report   BYTEA NOT NULL,
    state    TEXT NOT NULL,
    image_id TEXT NOT NULL,
    updated  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (host, ref)
);
CREATE INDEX pull_reports_ref ON pull_reports(ref);
