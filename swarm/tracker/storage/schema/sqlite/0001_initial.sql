-- SQLite, schema 1: join tokens (secret hashes only), manifests, their announce hashes, certificates.
CREATE TABLE tokens (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('builder', 'host')),
    secret_hash TEXT NOT NULL UNIQUE,
    created     INTEGER NOT NULL,
    revoked_at  INTEGER NULL,
    builder_key BLOB NULL
);
CREATE TABLE manifests (
    ref       TEXT PRIMARY KEY,
    envelope  BLOB NOT NULL,
    image_id  TEXT NOT NULL,
    seq       INTEGER NOT NULL UNIQUE,
    published INTEGER NOT NULL,
    publisher TEXT NOT NULL
);
CREATE TABLE torrents (
    announce_hash BLOB NOT NULL CHECK (length(announce_hash) = 20),
    blob          TEXT NOT NULL,
    ref           TEXT NOT NULL REFERENCES manifests(ref),
    PRIMARY KEY (announce_hash, ref)
);
CREATE TABLE certificates (
    serial    TEXT NOT NULL,
    name      TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL
);
CREATE INDEX certificates_name ON certificates(name);
