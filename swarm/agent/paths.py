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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in (self.identity, self.blobs_dir, self.manifests, self.resume):
                d.mkdir(exist_ok=True)
            os.chmod(self.identity, 0o700)
        except OSError as exc:
            raise UsageError(f"cannot use data dir {self.root}: {exc.strerror}") from exc


def socket_path(data: Path | None, socket: Path | None) -> Path:
    if socket is not None:
        return socket
    if data is not None:
        return AgentPaths(data).socket
    raise UsageError("give --data DIR (or --socket PATH) to find the local agent")
