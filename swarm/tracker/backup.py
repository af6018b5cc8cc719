"""`swarm tracker backup|restore|db`: a SQLite tracker's state in one archive, and its schema version.

A backup is a tar archive (mode 0600: it holds the CA key) of `tracker.db`,
copied with SQLite's online backup API (consistent while the tracker runs and
writes), plus `ca.key` and `ca.pem`, without which the join tokens already
handed out name a CA that no longer exists. PostgreSQL deployments keep
their CA in the database: back them up with `pg_dump` and restore with
`pg_restore`.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from swarm.core.errors import SwarmError, UsageError
from swarm.core.files import write_atomic
from swarm.tracker.ca import CA_CERT, CA_KEY
from swarm.tracker.storage import migrations
from swarm.tracker.storage.sqlite import DB_NAME

MEMBERS = (DB_NAME, CA_KEY, CA_CERT)


def _sqlite_only(database: str | None) -> None:
    if database and not database.startswith("sqlite:"):
        raise UsageError(
            "a PostgreSQL tracker is backed up with pg_dump and restored with pg_restore (its CA is in the database)"
        )


def backup(data: Path, database: str | None, dest: Path) -> list[str]:
    """Write the archive to `dest` (atomically); returns the names it holds."""
    _sqlite_only(database)
    db = data / DB_NAME
    if not db.is_file():
        raise UsageError(f"no tracker database at {db}")
    with tempfile.TemporaryDirectory(prefix="swarm-backup-") as tmp:
        copy = Path(tmp) / DB_NAME
        source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(copy, arcname=DB_NAME)
            for name in (CA_KEY, CA_CERT):
                if (data / name).is_file():
                    tar.add(data / name, arcname=name)
            names = tar.getnames()
    try:
        write_atomic(dest, archive.getvalue(), 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror}") from exc
    return names


def restore(archive: Path, data: Path, database: str | None, force: bool) -> int:
    """Put a backup's files into `data` (the tracker must be stopped); returns the schema version."""
    _sqlite_only(database)
    if (data / DB_NAME).exists() and not force:
        raise UsageError(f"{data / DB_NAME} exists: stop the tracker and add --force to replace it")
    try:
        with tarfile.open(archive, mode="r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if (
                DB_NAME not in members
                or not set(members) <= set(MEMBERS)
                or not all(m.isfile() for m in members.values())
            ):
                raise UsageError(f"{archive} is not a swarm tracker backup (expected {', '.join(MEMBERS)})")
            contents = {name: tar.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"cannot read backup {archive}: {exc}") from exc
    version = _check_database(contents[DB_NAME], archive)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in ("-wal", "-shm"):  # the old database's journal must not be replayed onto the new one
        (data / (DB_NAME + suffix)).unlink(missing_ok=True)
    for name, body in contents.items():
        write_atomic(data / name, body, 0o644 if name == CA_CERT else 0o600)
    return version


def _check_database(body: bytes, archive: Path) -> int:
    with tempfile.NamedTemporaryFile(suffix=".db") as f:
        f.write(body)
        f.flush()
        conn = sqlite3.connect(f"file:{f.name}?mode=ro", uri=True)
        try:
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise UsageError(f"the database in {archive} is damaged")
            return _version(conn)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"the database in {archive} is unreadable: {exc}") from exc
        finally:
            conn.close()


def _version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class SchemaStatus:
    location: str
    version: int
    latest: int

    @property
    def summary(self) -> str:
        if self.version == self.latest:
            state = "up to date"
        elif self.version > self.latest:
            state = "newer than this swarm: upgrade swarm"
        else:
            state = f"{self.latest - self.version} migration(s) pending: swarm tracker db migrate"
        return f"{self.location}: schema {self.version}, this swarm's {self.latest} ({state})"


def schema_status(data: Path, database: str | None) -> SchemaStatus:
    """The schema version of the database, read without changing it."""
    if database and not database.startswith("sqlite:"):
        return _postgres_status(database)
    db = Path(database[len("sqlite:") :]) / DB_NAME if database else data / DB_NAME
    if not db.is_file():
        return SchemaStatus(f"sqlite:{db}", 0, migrations.latest("sqlite"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return SchemaStatus(f"sqlite:{db}", _version(conn), migrations.latest("sqlite"))
    finally:
        conn.close()


def _postgres_status(url: str) -> SchemaStatus:
    import psycopg

    from swarm.tracker.storage.postgres import _redact

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            try:
                row = conn.execute("SELECT version FROM schema_version").fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
    except psycopg.Error as exc:
        raise SwarmError(f"cannot read the tracker database {_redact(url)}: {str(exc).strip()}") from exc
    return SchemaStatus(_redact(url), int(row[0]) if row else 0, migrations.latest("postgresql"))


def migrate(data: Path, database: str | None) -> tuple[int, SchemaStatus]:
    """Bring the schema to this swarm's version; returns (version before, status after)."""
    before = schema_status(data, database).version
    from swarm.tracker.storage import open_storage

    open_storage(data, database).close()  # opening migrates, in one exclusive transaction
    return before, schema_status(data, database)
