-- PostgreSQL, schema 1: SQLite's two schemas in one, and the CA shared by the replicas.
CREATE TABLE tokens (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('builder', 'host')),
    secret_hash TEXT NOT NULL UNIQUE,
    created     BIGINT NOT NULL,
    revoked_at  BIGINT NULL,
    builder_key BYTEA NULL
);
CREATE TABLE manifests (
    ref       TEXT PRIMARY KEY,
    envelope  BYTEA NOT NULL,
    image_id  TEXT NOT NULL,
    seq       BIGINT NOT NULL UNIQUE,
    published BIGINT NOT NULL,
    publisher TEXT NOT NULL
);
CREATE TABLE torrents (
    announce_hash BYTEA NOT NULL CHECK (length(announce_hash) = 20),
    blob          TEXT NOT NULL,
    ref           TEXT NOT NULL REFERENCES manifests(ref),
    PRIMARY KEY (announce_hash, ref)
);
CREATE INDEX torrents_ref ON torrents(ref);
CREATE TABLE certificates (
    serial    TEXT NOT NULL,
    name      TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL
);
CREATE INDEX certificates_name ON certificates(name);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revocations', 0);
CREATE TABLE ca (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    key_pem  TEXT NOT NULL,
    cert_pem TEXT NOT NULL
);
