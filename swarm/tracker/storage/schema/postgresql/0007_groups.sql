-- PostgreSQL, schema 7: host groups. Every token existing now is a member of `default`, and every
-- manifest published so far is in `default`, so nothing changes for them on upgrade.
CREATE TABLE host_groups (
    name    TEXT PRIMARY KEY,
    created BIGINT NOT NULL
);
INSERT INTO host_groups (name, created) VALUES ('default', CAST(extract(epoch FROM now()) AS BIGINT));
CREATE TABLE token_groups (
    token TEXT NOT NULL,
    grp   TEXT NOT NULL REFERENCES host_groups(name),
    PRIMARY KEY (token, grp)
);
CREATE INDEX token_groups_grp ON token_groups(grp);
INSERT INTO token_groups (token, grp) SELECT name, 'default' FROM tokens;
CREATE TABLE group_patterns (
    pattern TEXT PRIMARY KEY,
    grp     TEXT NOT NULL REFERENCES host_groups(name)
);
ALTER TABLE manifests ADD COLUMN grp TEXT NOT NULL DEFAULT 'default';
INSERT INTO meta (key, value) VALUES ('groups', 0);
