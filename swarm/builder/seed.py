"""`swarm seed`: prepare (in the builder's agent) → sign (here) → publish and seed (agent).

The signing key never enters the agent: it gets back the unsigned manifests
and receives the signed envelopes. The agent is reached through `SeedingAgent`
(what `swarm.agent.client.AgentClient` provides), so this module does not
depend on the agent package, which itself runs `swarm.builder.prepare`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from swarm.core.api import ManifestEntry
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SigningKey


class Prepared(Protocol):
    @property
    def manifests(self) -> Sequence[bytes]: ...


class Published(Protocol):
    @property
    def published(self) -> Sequence[ManifestEntry]: ...


class SeedingAgent(Protocol):
    def prepare(
        self,
        images: Sequence[str],
        key_id: str,
        archive: Path | None = None,
        on_note: Callable[[Any], None] | None = None,
    ) -> Prepared: ...

    def publish(self, envelopes: Sequence[bytes], on_note: Callable[[Any], None] | None = None) -> Published: ...


def seed(
    agent: SeedingAgent,
    images: Sequence[str],
    key: SigningKey,
    archive: Path | None = None,
    on_note: Callable[[Any], None] | None = None,
) -> list[ManifestEntry]:
    """Publish `images` (from Docker, or all from one `docker save`/OCI `archive`) signed with `key`."""
    for image in images:
        ImageRef.parse(image)  # a malformed name fails here, before any work
    prepared = agent.prepare(images, key.key_id, archive.resolve() if archive else None, on_note)
    envelopes = [key.sign(Manifest.from_bytes(raw)).to_bytes() for raw in prepared.manifests]
    return list(agent.publish(envelopes, on_note).published)
