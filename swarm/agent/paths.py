"""Where an agent keeps things inside its data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from swarm.core.errors import UsageError


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def key(self) -> Path:
        return self.identity / "host.key"

    @property
    def cert(self) -> Path:
        return self.identity / "host.pem"

    @property
    def ca(self) -> Path:
        return self.identity / "ca.pem"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def resume(self) -> Path:
        return self.root / "resume"

    @property
    def running(self) -> Path:
        """Present while an agent runs: found at start, the last run did not stop cleanly."""
        return self.root / "agent.running"

    @property
    def state(self) -> Path:
        return self.root / "state.msgpack"

    def blob(self, digest_hex: str) -> Path:
        return self.blobs_dir / digest_hex

    def create(self) -> None:
        """Make the data dir; it and everything in it readable by the agent's user only.

        Blobs are confidential layers and the identity holds the TLS key: directories are
        0700 and files 0600 whatever the umask (files an older agent left wider included)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for d in (self.identity, self.blobs_dir, self.manifests, self.resume):
                d.mkdir(exist_ok=True, mode=0o700)
            restrict_tree(self.root)
        except OSError as exc:
            raise UsageError(f"cannot use data dir {self.root}: {exc.strerror}") from exc


#: what the agent creates while it runs (libtorrent's blob files included): owner only
AGENT_UMASK = 0o077


def restrict_tree(root: Path) -> None:
    """Directories under `root` (itself included) 0700, regular files 0600; links are left alone."""
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.chmod(path, 0o600)


def socket_path(data: Path | None, socket: Path | None) -> Path:
    if socket is not None:
        return socket
    if data is not None:
        return AgentPaths(data).socket
    raise UsageError("give --data DIR (or --socket PATH) to find the local agent")
