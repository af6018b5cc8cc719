"""`swarm seed`: prepare (in the builder's agent) → sign (here) → publish and seed (agent).

The signing key never enters the agent: it gets back the unsigned manifests
and receives the signed envelopes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from swarm.agent.client import AgentClient, OnNote
from swarm.core.api import ManifestEntry
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SigningKey


def seed(client: AgentClient, images: Sequence[str], key: SigningKey, archive: Path | None = None,
         on_note: OnNote | None = None, expires_in: float = 0) -> list[ManifestEntry]:
    """Publish `images` (from Docker, or all from one `docker save`/OCI `archive`) signed with `key`;
    with `expires_in` seconds, hosts refuse the manifests that long after their creation."""
    for image in images:
        ImageRef.parse(image)  # a malformed name fails here, before any work
    prepared = client.prepare(images, key.key_id, archive.resolve() if archive else None, on_note)
    envelopes = [key.sign(_with_expiry(Manifest.from_bytes(raw), expires_in)).to_bytes()
                 for raw in prepared.manifests]
    return list(client.publish(envelopes, on_note).published)


def _with_expiry(manifest: Manifest, expires_in: float) -> Manifest:
    if expires_in <= 0:
        return manifest
    return dataclasses.replace(manifest, expires_ms=manifest.created_ms + int(expires_in * 1000))
