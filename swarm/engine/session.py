"""The one owner of the libtorrent session.

Everything that touches libtorrent at run time goes through `Engine`: it
builds the session with the settings measured in notes/libtorrent.md (TCP
only, no DHT/LSD/UPnP/NAT-PMP, no queueing, an SSL listen socket only),
attaches the host certificate to every torrent, turns alerts into events for
asyncio, and keeps per-peer byte counts that survive disconnects (libtorrent
forgets a peer's counters when the connection closes, so bytes are counted
from `block_finished_alert`, which names the sending peer, for every block of
every connection however short: see `_suggest_mode` for the one setting that
would silence it). Who a peer is (its name and role in those counts) is decided
by a `PeerResolver`, never by the peer id alone in an agent
(swarm/agent/peer_names.py asks the tracker).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import libtorrent as lt

from swarm.core.addresses import format_host, parse_listen
from swarm.core.api import RETIRED_TORRENT
from swarm.core.digest import digest_hex
from swarm.core.errors import TorrentError, UsageError
from swarm.core.files import write_atomic
from swarm.core.manifest import Layer
from swarm.core.peerid import PeerIdentity, peer_identity
from swarm.core.peerid import peer_name as peer_name
from swarm.core.peerid import peer_tag as peer_tag
from swarm.core.redact import redact

log = logging.getLogger(__name__)

BLOCK = 16 * 1024
#: the first libtorrent whose `verify_peer_cert` matches a certificate name to the torrent name
#: exactly; before it a SAN that is a prefix of the name matched too (host groups rely on exact)
EXACT_NAME_MATCH = (2, 0, 13)


def check_libtorrent(version: str = lt.version) -> None:
    """UsageError unless this libtorrent matches peer certificate names exactly."""
    try:
        have = tuple(int(part) for part in version.split(".")[:3])
    except ValueError as exc:
        raise UsageError(f"cannot read the libtorrent version {version!r}") from exc
    if have < EXACT_NAME_MATCH:
        need = ".".join(map(str, EXACT_NAME_MATCH))
        raise UsageError(f"libtorrent {version} matches certificate names by prefix: swarm needs {need} or later")


class EngineObserver(Protocol):
    """Told about transfer events, from the alert thread (implementations must be thread-safe)."""

    def block_received(self, source_role: str, nbytes: int) -> None: ...

    def piece_failed(self) -> None: ...


class PeerResolver(Protocol):
    """Who a peer connection is (its name and role), for the per-peer stats and byte counts.

    Called from the alert thread with `seen_at`, a time (time.time()) after its data arrived: it
    may block briefly to look a new peer up as of then; from `status()` with None: it must not
    block. swarm/agent/peer_names.py asks the tracker."""

    def identify(self, info_hash: bytes, ip: str, port: int, pid: bytes, seen_at: float | None) -> PeerIdentity: ...


class ClaimedNames:
    """Believes the peer id (a claim anyone can make): for engines with no tracker to ask (tests, tools)."""

    def identify(self, info_hash: bytes, ip: str, port: int, pid: bytes, seen_at: float | None) -> PeerIdentity:
        return peer_identity(pid)


def dh_params_path() -> str:
    # real DH parameters: an empty one makes libtorrent post an error alert
    return str(resources.files("swarm.engine").joinpath("dhparams.pem"))


@dataclass
class PeerStat:
    name: str
    address: str
    downloaded: int  # payload bytes received from it (whole life of the torrent)
    uploaded: int  # payload bytes sent to it while connected now
    connected: bool


@dataclass
class TorrentStatus:
    info_hash: str
    name: str
    state: str
    progress: float
    total: int
    done: int
    download_rate: int
    upload_rate: int
    downloaded: int  # payload received this session
    uploaded: int  # payload sent this session
    peers: list[PeerStat]
    failed_pieces: int
    error: str
    #: the torrent's own name: the id of its image's host group (`name` is its file on disk)
    group: str = ""
    #: payload received by the sending peer's role ("builder", "host", "?"), whole life of the torrent
    received_by_role: dict[str, int] = field(default_factory=dict)


@dataclass
class _Torrent:
    handle: Any
    size: int
    piece_length: int
    finished: asyncio.Event
    flushed: asyncio.Event
    file: str = ""  # the file on disk when not the torrent's name (a blob is stored under its digest)
    from_peer: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    from_role: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed_pieces: int = 0
    error: str = ""


class Engine:
    def __init__(
        self,
        listen: str | tuple[str, int],
        host_name: str,
        cert_path: Path,
        key_path: Path,
        upload_limit: int = 0,
        download_limit: int = 0,
        role: str = "host",
        resume_dir: Path | None = None,
        observer: EngineObserver | None = None,
        names: PeerResolver | None = None,
    ) -> None:
        self._listen = parse_listen(listen) if isinstance(listen, str) else listen
        self._cert = cert_path
        self._key = key_path
        self._tag = peer_tag(host_name, role)
        self._role = role
        self._suggesting = _suggest_mode(role)
        self._resume_dir = resume_dir
        self._observer = observer
        self._names = names or ClaimedNames()
        self._popped_at = 0.0
        self._resume_pending = 0
        self._resume_done = threading.Condition()
        #: payload bytes sent by torrents already removed, so the total never goes backwards
        self._removed_uploaded = 0
        self._limits = (upload_limit, download_limit)
        self._torrents: dict[bytes, _Torrent] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        #: torrents the tracker retired (removed from the session, never announced again)
        self.retired: set[bytes] = set()
        #: the tracker error being seen, if announces are failing: one line when lost, one when back
        self._tracker_lost: str | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        check_libtorrent()
        self._loop = loop
        host, port = self._listen
        pack = lt.high_performance_seed()
        pack.update(
            {
                "listen_interfaces": f"{format_host(host)}:{port}s",
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "enable_outgoing_utp": False,
                "enable_incoming_utp": False,
                "active_downloads": -1,
                "active_seeds": -1,
                "active_limit": -1,
                "active_checking": -1,
                "allow_multiple_connections_per_ip": True,
                "ignore_limits_on_local_network": False,
                "upload_rate_limit": self._limits[0],
                "download_rate_limit": self._limits[1],
                "peer_fingerprint": self._tag,
                "user_agent": "swarm/0.1",
                # high_performance_seed drops a peer after 20 s of silence and never retries one
                # that failed once: a host whose link drops for 20 s then waits minutes for the
                # tracker's back-off (tests/e2e/test_e2e_faults.py). Keep peers through outages.
                "peer_timeout": 120,
                "inactivity_timeout": 600,
                "max_failcount": 10,
                "min_reconnect_time": 2,
                "min_announce_interval": 5,
                # measured in bench/results/fleet-findings.md: hosts that keep one second of
                # requests in flight per peer (not 3 s, not 1500 blocks) spread their requests
                # over more peers and ask the builder for fewer pieces another host already has
                "request_queue_time": 1,
                "max_out_request_queue": 64,
                "suggest_mode": self._suggesting,
                "stop_tracker_timeout": 2,
                "alert_mask": (
                    lt.alert_category.error
                    | lt.alert_category.status
                    | lt.alert_category.storage
                    | lt.alert_category.tracker
                    | lt.alert_category.block_progress
                ),
            }
        )
        self._session = lt.session(pack)
        if self.ssl_port == 0:
            raise UsageError(f"cannot listen for peers on {host}:{port}")
        self._thread = threading.Thread(target=self._pump, name="libtorrent-alerts", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._session is not None:
            self._session.pause()
            self._session = None

    @property
    def ssl_port(self) -> int:
        port: int = self._session.ssl_listen_port()
        return port

    def set_rate_limits(self, upload: int, download: int) -> None:
        self._limits = (upload, download)
        self._session.apply_settings({"upload_rate_limit": upload, "download_rate_limit": download})

    # -- torrents -----------------------------------------------------------

    def add(
        self,
        metainfo: bytes,
        save_dir: Path,
        tracker_url: str,
        seed: bool,
        trust_resume: bool = False,
        file_name: str | None = None,
    ) -> bytes:
        """Start a torrent (idempotent), its one file read and written as `save_dir/file_name`.

        A layer torrent is named after its group, its blob stored under its digest: torrents of
        several groups for one blob share that one file.
        `seed`: the file is complete and its sha256 verified. Otherwise the
        saved resume data is used only with `trust_resume` (after a clean
        shutdown); without it libtorrent hash-checks whatever is on disk, so
        verified pieces are kept and nothing unproven is trusted.
        """
        ti = lt.torrent_info(metainfo)
        ih: bytes = ti.info_hashes().v2.to_bytes()
        with self._lock:
            if ih in self._torrents:
                return ih
        atp = self._resume_params(ih) if trust_resume and not seed else None
        atp = atp or lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(save_dir)
        atp.trackers = [tracker_url]
        # a torrent that is not auto-managed must also not start paused
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        if seed:
            atp.flags |= lt.torrent_flags.seed_mode
        elif self._suggesting != _SUGGEST_DOWNLOADING:
            # a builder that downloads counts its bytes like a host (see `_suggest_mode`)
            self._suggesting = _SUGGEST_DOWNLOADING
            self._session.apply_settings({"suggest_mode": _SUGGEST_DOWNLOADING})
        if file_name is not None and file_name != ti.name():
            atp.renamed_files = {0: file_name}
        assert self._loop is not None
        # file 0 is the blob; v2 pads the tail, and padding is not payload
        entry = _Torrent(
            handle=None,
            size=ti.layout().file_size(0),
            piece_length=ti.piece_length(),
            finished=asyncio.Event(),
            flushed=asyncio.Event(),
            file=file_name or "",
        )
        with self._lock:
            self._torrents[ih] = entry
        try:
            entry.handle = self._session.add_torrent(atp)
        except RuntimeError as exc:
            with self._lock:
                del self._torrents[ih]
            raise TorrentError(f"cannot add torrent: {exc}") from exc
        self._apply_cert(entry.handle)
        return ih

    def add_layer(
        self, layer: Layer, blobs_dir: Path, tracker_url: str, seed: bool, trust_resume: bool = False
    ) -> bytes:
        """Start a layer's torrent over its blob, which is stored under its digest in `blobs_dir`."""
        return self.add(layer.torrent, blobs_dir, tracker_url, seed, trust_resume, file_name=digest_hex(layer.blob))

    def remove(self, ih: bytes, reason: str = "its torrent was stopped") -> None:
        """Stop a torrent (libtorrent announces `stopped`) and forget its resume data; a download
        still waited for fails with `reason` rather than wait forever."""
        with self._lock:
            entry = self._torrents.pop(ih, None)
        if entry is not None:
            s = entry.handle.status()
            self._removed_uploaded += int(s.total_payload_upload)
            self._session.remove_torrent(entry.handle)
            entry.error = entry.error or reason
            self._signal(entry)
        if self._resume_dir is not None:
            (self._resume_dir / f"{ih.hex()}.resume").unlink(missing_ok=True)

    # -- resume data ----------------------------------------------------------

    def _resume_params(self, ih: bytes) -> Any:
        if self._resume_dir is None:
            return None
        path = self._resume_dir / f"{ih.hex()}.resume"
        try:
            return lt.read_resume_data(path.read_bytes())
        except (OSError, RuntimeError):
            return None

    def save_resume_data(self, timeout: float = 10.0) -> int:
        """Ask every changed torrent for resume data and wait until it is written."""
        if self._resume_dir is None or self._session is None:
            return 0
        with self._lock:
            handles = [t.handle for t in self._torrents.values()]
        with self._resume_done:
            for h in handles:
                if h.need_save_resume_data():
                    self._resume_pending += 1
                    h.save_resume_data(_RESUME_FLAGS)
            asked = self._resume_pending
            self._resume_done.wait_for(lambda: self._resume_pending <= 0, timeout)
            self._resume_pending = 0
        return asked

    def _write_resume(self, alert: Any) -> None:
        assert self._resume_dir is not None
        ih = alert.handle.info_hashes().v2.to_bytes()
        params = alert.params
        # the announce URL carries the join-token secret: never on disk (`add` sets it again on load)
        params.trackers, params.tracker_tiers = [], []
        write_atomic(self._resume_dir / f"{ih.hex()}.resume", lt.write_resume_data_buf(params))

    def _resume_answered(self) -> None:
        with self._resume_done:
            self._resume_pending -= 1
            self._resume_done.notify_all()

    def has(self, ih: bytes) -> bool:
        with self._lock:
            return ih in self._torrents

    async def wait_finished(self, ih: bytes) -> None:
        """Return once every piece is downloaded and passed its hash check."""
        entry = self._entry(ih)
        while not self._complete(entry):
            await entry.finished.wait()
            entry.finished.clear()
            if entry.error:
                raise TorrentError(entry.error)
        # pieces are hashed in memory before the disk thread writes them:
        # "finished" does not mean the file holds the bytes yet
        entry.flushed.clear()
        entry.handle.flush_cache()
        await entry.flushed.wait()

    @staticmethod
    def _complete(entry: _Torrent) -> bool:
        s = entry.handle.status()
        return bool(s.state in _DONE_STATES and s.total_wanted_done == s.total_wanted and s.total_wanted > 0)

    def set_certificate(self, cert_path: Path, key_path: Path) -> None:
        """New connections of every torrent use the renewed certificate."""
        self._cert, self._key = cert_path, key_path
        with self._lock:
            handles = [t.handle for t in self._torrents.values()]
        for h in handles:
            self._apply_cert(h)

    def _apply_cert(self, handle: Any) -> None:
        handle.set_ssl_certificate(str(self._cert), str(self._key), dh_params_path())

    def force_recheck(self, ih: bytes) -> None:
        entry = self._entry(ih)
        entry.finished.clear()
        entry.handle.force_recheck()

    def status(self, ih: bytes) -> TorrentStatus:
        entry = self._entry(ih)
        s = entry.handle.status()
        live: dict[str, PeerStat] = {}
        for p in entry.handle.get_peer_info():
            name = self._names.identify(ih, p.ip[0], p.ip[1], p.pid.to_bytes(), None).name
            stat = live.setdefault(name, PeerStat(name, f"{p.ip[0]}:{p.ip[1]}", 0, 0, True))
            stat.uploaded += p.total_upload
        with self._lock:
            received = dict(entry.from_peer)
            by_role = dict(entry.from_role)
        for name, n in received.items():
            live.setdefault(name, PeerStat(name, "", 0, 0, False)).downloaded = n
        return TorrentStatus(
            info_hash=ih.hex(),
            name=entry.file or s.name,
            state=_STATES.get(int(s.state), str(s.state)),
            progress=float(s.progress),
            total=entry.size,
            done=int(s.total_wanted_done),
            download_rate=int(s.download_payload_rate),
            upload_rate=int(s.upload_payload_rate),
            downloaded=int(s.total_payload_download),
            uploaded=int(s.total_payload_upload),
            peers=sorted(live.values(), key=lambda p: p.name),
            failed_pieces=entry.failed_pieces,
            error=entry.error or (s.errc.message() if s.errc.value() else ""),
            group=s.name,
            received_by_role=by_role,
        )

    def uploaded_total(self) -> int:
        """Payload bytes sent this session, torrents since removed included."""
        with self._lock:
            handles = [t.handle for t in self._torrents.values()]
        return self._removed_uploaded + sum(int(h.status().total_payload_upload) for h in handles)

    def info_hashes(self) -> list[bytes]:
        with self._lock:
            return list(self._torrents)

    def _entry(self, ih: bytes) -> _Torrent:
        with self._lock:
            entry = self._torrents.get(ih)
        if entry is None:
            raise TorrentError(f"no torrent {ih.hex()[:12]}")
        return entry

    # -- alerts -------------------------------------------------------------

    def _pump(self) -> None:
        while not self._stop.is_set():
            session = self._session
            if session is None:
                return
            session.wait_for_alert(250)
            alerts = session.pop_alerts()
            self._popped_at = time.time()  # every alert of the batch happened before this
            for alert in alerts:
                try:
                    self._on_alert(alert)
                except Exception:  # an alert must never kill the pump
                    log.exception("alert handling failed")

    def _on_alert(self, alert: Any) -> None:
        if isinstance(alert, lt.block_finished_alert):
            entry = self._entry_for(alert)
            if entry is not None:
                ih, (ip, port) = alert.handle.info_hashes().v2.to_bytes(), alert.endpoint
                who = self._names.identify(ih, ip, port, alert.pid.to_bytes(), seen_at=self._popped_at)
                nbytes = self._block_size(entry, alert)
                with self._lock:
                    entry.from_peer[who.name] += nbytes
                    entry.from_role[who.role] += nbytes
                if self._observer is not None:
                    self._observer.block_received(who.role, nbytes)
        elif isinstance(alert, lt.save_resume_data_alert):
            try:
                self._write_resume(alert)
            finally:
                self._resume_answered()
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            self._resume_answered()
        elif isinstance(alert, lt.torrent_finished_alert):
            entry = self._entry_for(alert)
            if entry is not None:
                self._signal(entry)
        elif isinstance(alert, lt.cache_flushed_alert):
            entry = self._entry_for(alert)
            if entry is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(entry.flushed.set)
        elif isinstance(alert, lt.hash_failed_alert):
            entry = self._entry_for(alert)
            if entry is not None:
                entry.failed_pieces += 1
                if self._observer is not None:
                    self._observer.piece_failed()
                log.warning("piece %d of %s failed its hash check", alert.piece_index, entry.handle.status().name)
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            entry = self._entry_for(alert)
            message = alert.message()
            if "DECODER" in message:  # see notes: harmless with some DH setups
                return
            if entry is not None and not entry.error:  # later ones repeat it for every queued block
                log.error("torrent error: %s", message)
            if entry is not None and isinstance(alert, lt.file_error_alert) and not entry.error:
                entry.error = message
                entry.handle.pause()  # a disk error repeats for every block otherwise
                self._signal(entry)
        elif isinstance(alert, lt.tracker_error_alert) and alert.failure_reason() == RETIRED_TORRENT:
            self._retire(alert)
        elif isinstance(alert, lt.tracker_error_alert):
            message = redact(alert.message())
            if self._tracker_lost is None:
                log.warning("tracker lost (announces failing; logged once until it answers): %s", message)
            else:
                log.debug("tracker: %s", message)
            self._tracker_lost = message
        elif isinstance(alert, lt.tracker_reply_alert) and self._tracker_lost is not None:
            self._tracker_lost = None
            log.info("tracker regained: announces answered again")

    def _retire(self, alert: Any) -> None:
        """The tracker retired this torrent (every manifest naming it was removed): stop it for good
        rather than announce forever; its blob stays in the cache until the cache's own eviction."""
        entry = self._entry_for(alert)
        if entry is None:
            return  # the `stopped` announce of the removal is answered the same: already gone
        ih = alert.handle.info_hashes().v2.to_bytes()
        name = entry.file or entry.handle.status().name
        self.retired.add(ih)
        self.remove(ih)
        log.info("layer sha256:%s retired by the tracker (its images were removed): no longer seeded", name)

    def _entry_for(self, alert: Any) -> _Torrent | None:
        try:
            ih = alert.handle.info_hashes().v2.to_bytes()
        except RuntimeError:
            return None
        with self._lock:
            return self._torrents.get(ih)

    def _block_size(self, entry: _Torrent, alert: Any) -> int:
        start = int(alert.piece_index) * entry.piece_length + int(alert.block_index) * BLOCK
        return max(0, min(BLOCK, entry.size - start))

    def _signal(self, entry: _Torrent) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(entry.finished.set)


def _suggest_mode(role: str) -> int:
    """The builder suggests nothing until it downloads; every other peer keeps `suggest_read_cache`.

    A seed in suggest mode advertises the pieces it has just read, so the
    builder, having sent a piece to one host, told the others to ask it for that
    same piece: duplicates on the one uplink that matters (fleet-findings.md).

    A downloader must keep suggest mode, or it loses the byte attribution.
    libtorrent posts `block_finished_alert` from
    `peer_connection::on_disk_write_complete`, which returns first when the
    torrent has no piece picker. 2.1's default disk back end (`pread_disk_io`)
    keeps received blocks in a write-back cache and completes their writes when
    it flushes, mostly after the last piece has passed its hash check (3 MiB at
    1 MB/s: all 192 block alerts came after `torrent_finished_alert`), and
    `torrent::maybe_done_flushing` drops the picker once every piece passed
    unless suggest mode is on. With `suggest_mode=0` those blocks were never
    attributed: 0 of 192 at 1 MB/s, a quarter of 512 unthrottled.
    """
    return _SUGGEST_SEEDING if role == "builder" else _SUGGEST_DOWNLOADING


_SUGGEST_SEEDING = int(lt.suggest_mode_t.no_piece_suggestions)
_SUGGEST_DOWNLOADING = int(lt.suggest_mode_t.suggest_read_cache)


_RESUME_FLAGS = lt.save_resume_flags_t.only_if_modified | lt.save_resume_flags_t.flush_disk_cache
_DONE_STATES = (lt.torrent_status.states.finished, lt.torrent_status.states.seeding)
_STATES = {
    1: "checking",
    2: "downloading-metadata",
    3: "downloading",
    4: "finished",
    5: "seeding",
    7: "checking-resume",
}
