-- SQLite, schema 8: removed tags and retired torrents. A removed tag keeps its last seq and signed
-- creation time (a tombstone), so replaying its old envelope cannot bring it back; torrents that only
-- removed manifests named are answered "retired torrent" on announce.
CREATE TABLE removed_tags (
    ref        TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    removed    INTEGER NOT NULL
);
CREATE TABLE retired_torrents (
    announce_hash BLOB PRIMARY KEY,
    retired       INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('removals', 0);
