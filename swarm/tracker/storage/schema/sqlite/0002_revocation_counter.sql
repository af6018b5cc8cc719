-- SQLite, schema 2: the revocation counter trackers poll (it starts at the revocations already made),
-- and an index for replacing a manifest's announce hashes.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revocations', (SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL));
CREATE INDEX torrents_ref ON torrents(ref);
