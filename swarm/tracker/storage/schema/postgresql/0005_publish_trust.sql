-- PostgreSQL, schema 3: builder tokens' repository patterns, repository owners, each manifest's signed
-- creation time (no rollback), and the root-signed key document.
-- (patterns in their own table: schema 4 rebuilds `tokens` from its six columns)
CREATE TABLE publish_patterns (
    name     TEXT PRIMARY KEY,
    patterns TEXT NOT NULL
);
INSERT INTO publish_patterns (name, patterns) SELECT name, '*' FROM tokens WHERE role = 'builder';
ALTER TABLE manifests ADD COLUMN created_ms BIGINT NOT NULL DEFAULT 0;
CREATE TABLE repositories (
    repository TEXT PRIMARY KEY,
    owner      TEXT NOT NULL
);
INSERT INTO repositories (repository, owner)
    SELECT DISTINCT ON (split_part(ref, ':', 1)) split_part(ref, ':', 1), publisher FROM manifests
    WHERE strpos(ref, ':') > 0 ORDER BY split_part(ref, ':', 1), seq;
CREATE TABLE key_document (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL,
    envelope BYTEA NOT NULL
);
