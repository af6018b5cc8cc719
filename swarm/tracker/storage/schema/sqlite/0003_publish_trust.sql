-- SQLite, schema 3: builder tokens' repository patterns, repository owners, each manifest's signed
-- creation time (no rollback), and the root-signed key document.
ALTER TABLE tokens ADD COLUMN publish TEXT NOT NULL DEFAULT '*';
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
