"""Packet capture on the test bed's bridge, and a small pcap reader.

    cap = Capture(bridge_ns, "br0", path).start()
    ...                              # traffic
    cap.stop()
    streams = tcp_streams(path)      # {(src, sport, dst, dport): reassembled payload}

tcpdump (Debian package `tcpdump`) writes the full frames; the reader
reassembles each TCP direction by sequence number, so a string split across
two segments is still found.
"""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import enter
from tests.support.procs import wait_for

Flow = tuple[str, int, str, int]


def cannot_capture_reason() -> str | None:
    return None if shutil.which("tcpdump") else "tcpdump is missing (apt-get install tcpdump)"


@dataclass
class Capture:
    ns: str
    dev: str
    path: Path
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    dropped: int | None = None

    def start(self, timeout: float = 20) -> Capture:
        log = self.log or self.path.with_suffix(".log")
        self.log = log
        with open(log, "wb") as out:
            # -Z root: tcpdump would drop to user tcpdump, who cannot write here
            self.proc = subprocess.Popen(
                [*enter(self.ns), "tcpdump", "-i", self.dev, "-n", "-s", "0", "-B", "32768", "-U", "-Z", "root",
                 "-w", str(self.path)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "listening on" in self._text() or self.proc is None or self.proc.poll() is not None,
                 timeout, "tcpdump to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"tcpdump exited {self.proc.returncode}: {self._text()}")
        return self

    def _text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        m = re.search(r"(\d+) packets? dropped by kernel", self._text())
        self.dropped = int(m.group(1)) if m else None


@dataclass
class Segment:
    seq: int
    data: bytes


@dataclass
class _Flow:
    isn: int | None = None
    segments: list[Segment] = field(default_factory=list)


def packets(path: Path) -> list[bytes]:
    """The frames of a pcap file (Ethernet link type, either byte order, µs or ns stamps)."""
    raw = path.read_bytes()
    if len(raw) < 24:
        return []
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    (linktype,) = struct.unpack(endian + "I", raw[20:24])
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    frames = []
    pos = 24
    while pos + 16 <= len(raw):
        _s, _us, incl, _orig = struct.unpack(endian + "IIII", raw[pos:pos + 16])
        frames.append(raw[pos + 16:pos + 16 + incl])
        pos += 16 + incl
    return frames


def tcp_segments(path: Path) -> list[tuple[Flow, int, int, bytes]]:
    """(flow, seq, flags, payload) for every IPv4 TCP segment in the capture."""
    out = []
    for frame in packets(path):
        if len(frame) < 14:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        off = 14
        if ethertype == 0x8100:
            ethertype = struct.unpack("!H", frame[16:18])[0]
            off = 18
        if ethertype != 0x0800:
            continue
        ip = frame[off:]
        if len(ip) < 20 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        tcp = ip[ihl:total] if total else ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13]
        out.append(((src, sport, dst, dport), seq, flags, bytes(tcp[doff:])))
    return out


def tcp_streams(path: Path) -> dict[Flow, bytes]:
    """Each TCP direction's payload, reassembled in sequence order (retransmissions dropped)."""
    flows: dict[Flow, _Flow] = {}
    for flow, seq, flags, data in tcp_segments(path):
        f = flows.setdefault(flow, _Flow())
        if flags & 0x02:  # SYN: the stream starts at seq + 1
            f.isn = (seq + 1) & 0xFFFFFFFF
        if data:
            f.segments.append(Segment(seq, data))
    streams: dict[Flow, bytes] = {}
    for flow, f in flows.items():
        if not f.segments:
            continue
        base = f.isn if f.isn is not None else f.segments[0].seq
        placed = sorted((((s.seq - base) & 0xFFFFFFFF), s.data) for s in f.segments)
        buf = bytearray()
        for offset, data in placed:
            if offset > 0x7FFFFFFF:  # before the base (a segment seen before the SYN): skip
                continue
            end = offset + len(data)
            if end <= len(buf):
                continue
            if offset > len(buf):
                buf += b"\0" * (offset - len(buf))  # a hole (missed segment) stays a hole
            buf += data[len(buf) - offset:]
        streams[flow] = bytes(buf)
    return streams


def payload_bytes(path: Path, port: int | None = None) -> int:
    """Total TCP payload seen (to or from `port` if given), retransmissions included."""
    return sum(len(data) for flow, _seq, _flags, data in tcp_segments(path)
               if port is None or port in (flow[1], flow[3]))


def find(path: Path, needle: bytes) -> list[str]:
    """Where `needle` occurs: "raw" (anywhere in the file) and/or each flow whose stream holds it."""
    where = []
    if needle in path.read_bytes():
        where.append("raw")
    for flow, data in tcp_streams(path).items():
        if needle in data:
            where.append("%s:%d->%s:%d" % flow)
    return where


def tls_server_names(streams: dict[Flow, bytes]) -> dict[Flow, str]:
    """The SNI of each stream that opens with a TLS ClientHello (libtorrent's SSL torrents send the
    torrent's info-hash in hex there: the first 20 bytes of the v2 hash for a v2-only torrent)."""
    names = {}
    for flow, data in streams.items():
        name = _client_hello_sni(data)
        if name is not None:
            names[flow] = name
    return names


def _client_hello_sni(data: bytes) -> str | None:
    if len(data) < 44 or data[0] != 0x16 or data[5] != 0x01:  # handshake record, ClientHello
        return None
    pos = 9 + 2 + 32  # record (5) + handshake header (4), client version, random
    try:
        pos += 1 + data[pos]  # session id
        pos += 2 + struct.unpack("!H", data[pos:pos + 2])[0]  # cipher suites
        pos += 1 + data[pos]  # compression methods
        end = pos + 2 + struct.unpack("!H", data[pos:pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            kind, size = struct.unpack("!HH", data[pos:pos + 4])
            if kind == 0:  # server_name: list length (2), name type (1), name length (2), name
                (length,) = struct.unpack("!H", data[pos + 7:pos + 9])
                return data[pos + 9:pos + 9 + length].decode("ascii", "replace")
            pos += 4 + size
    except (IndexError, struct.error):
        return None
    return None
