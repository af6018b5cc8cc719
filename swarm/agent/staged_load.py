"""Load an image into Docker bottom-up while its upper layers still download.

`docker load` (legacy layout) first unpacks the whole archive into a temporary
directory and registers the layers only after the last byte, so one archive
streamed while downloading would hide only the unpacking (bench/load_stages.py:
0.61-0.77 of the load is left after the top layer, 0.25 with stages). Instead, each time the verified layers
at the bottom of the image grow, a *stage* loads them as an untagged partial
image (their diff_ids only, `swarm.core.layer_order.prefix_config`), sending
only the layer files Docker lacks; the partial image keeps those layers in
Docker. The final load is the real config and tag with the top layers' files
only; then the partial images are deleted (their layers belong to the real
image now). A pull that fails deletes them too, and Docker drops their layers:
it keeps no image. Only verified blobs are ever sent (the torrent's merkle tree
checked every block, the blob's sha256 the whole), and each layer's diff_id is
checked again while it is decompressed into Docker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm.core.errors import DockerError, DockerUnreachable
from swarm.core.layer_order import prefix_config
from swarm.core.manifest import Manifest
from swarm.images import load as docker_load

log = logging.getLogger(__name__)


class StagedLoad:
    """The stages of one pull's load into one Docker engine."""

    def __init__(self, docker: Any, manifest: Manifest, blob_path: Callable[[str], Path]) -> None:
        self._docker = docker
        self._manifest = manifest
        self._sources = [
            (layer.diff_id, layer.size, blob_path(layer.blob), layer.compression) for layer in manifest.layers
        ]
        #: bottom layers Docker holds through this pull's partial images
        self.loaded = 0
        #: a stage failed on Docker's side: no more stages, the final load sends every layer
        self.stopped = False

    def in_docker(self) -> frozenset[str]:
        return frozenset(layer.diff_id for layer in self._manifest.layers[: self.loaded])

    def _partial_config(self, count: int) -> bytes:
        return prefix_config(self._manifest.config, count, str(self._manifest.ref))

    async def stage(self, count: int) -> None:
        """Load the bottom `count` layers (verified, `count` < all) as this pull's partial image.

        A Docker failure stops the stages (logged): the final load then sends the whole image.
        """
        if self.stopped or count <= self.loaded:
            return
        stream = docker_load.image_tar_stream("", self._partial_config(count), self._sources[:count], self.in_docker())
        try:
            await asyncio.to_thread(docker_load.load_image, self._docker, stream)
        except (DockerError, DockerUnreachable) as exc:
            self.stopped = True
            log.warning(
                "%s: loading while downloading stopped (%s); loading it whole at the end", self._manifest.ref, exc
            )
            return
        self.loaded = count
        log.debug("%s: bottom %d of %d layers in Docker", self._manifest.ref, count, len(self._sources))

    async def finish(self) -> None:
        """Load the image itself (config and tag), with the layer files no stage loaded."""
        ref = str(self._manifest.ref)
        in_docker = frozenset() if self.stopped else self.in_docker()
        stream = docker_load.image_tar_stream(ref, self._manifest.config, self._sources, in_docker)
        try:
            await asyncio.to_thread(docker_load.load_image, self._docker, stream)
        except DockerError as exc:
            if not in_docker:
                raise
            # a partial image vanished meanwhile (someone pruned it): send every layer
            log.warning("%s: the staged layers are gone from Docker (%s); loading it whole", ref, exc)
            self.stopped = True
            whole = docker_load.image_tar_stream(ref, self._manifest.config, self._sources)
            await asyncio.to_thread(docker_load.load_image, self._docker, whole)

    async def clear(self) -> None:
        """Delete every partial image of this pull, from this run or an earlier one (kill -9)."""
        ids = ["sha256:" + hashlib.sha256(self._partial_config(n)).hexdigest() for n in range(1, len(self._sources))]
        try:
            for image in reversed(ids):
                await asyncio.to_thread(docker_load.remove_untagged, self._docker, image)
        except (DockerError, DockerUnreachable) as exc:
            log.warning("%s: could not delete its partial images: %s", self._manifest.ref, exc)
        self.loaded = 0
