-- SQLite, schema 3: builder tokens' repository patterns, repository owners, each manifest's signed
-- creation time (no rollback), and the root-signed key document.
-- (patterns in their own table: schema 4 rebuilds `tokens` from its six columns)
CREATE TABLE publish_patterns (
    name     TEXT PRIMARY KEY,
    patterns TEXT NOT NULL
);
INSERT INTO publish_patterns (name, patterns) SELECT name, '*' FROM tokens WHERE role = 'builder';
ALTER TABLE manifests ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE repositories (
    repository TEXT PRIMARY KEY,
    owner      TEXT NOT NULL
);
INSERT OR IGNORE INTO repositories (repository, owner)
    SELECT substr(ref, 1, instr(ref, ':') - 1), publisher FROM manifests WHERE instr(ref, ':') > 0 ORDER BY seq;
CREATE TABLE key_document (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
