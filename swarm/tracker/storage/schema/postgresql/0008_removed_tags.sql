-- PostgreSQL, schema 8: removed tags and retired torrents. A removed tag keeps its last seq and signed
-- creation time (a tombstone), so replaying its old envelope cannot bring it back; torrents that only
-- removed manifests named are answered "retired torrent" on announce.
CREATE TABLE removed_tags (
    ref        TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    removed    BIGINT NOT NULL
);
CREATE TABLE retired_torrents (
    announce_hash BYTEA PRIMARY KEY,
    retired       BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('removals', 0);
