"""What a tracker runs with: `ServeOptions`, and each setting's default, defined once here.

The CLI (its options and their shown defaults), the service and the HTTP
layer all read these; this module imports nothing heavy, so the CLI can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from swarm.tracker.peers.base import MAX_PEERS_PER_HOST
from swarm.tracker.ratelimit import DEFAULT_LIMIT, DEFAULT_WINDOW

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7070
DEFAULT_LISTEN = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
#: seconds a host certificate is valid, and the least accepted
DEFAULT_CERT_LIFETIME = 3600
MIN_CERT_LIFETIME = 60
#: seconds between a host's announces
DEFAULT_INTERVAL = 30
#: failed authentications per window from one address before it gets 429 (0: no limit)
DEFAULT_AUTH_FAILURE_LIMIT = DEFAULT_LIMIT
#: seconds a client has to send a whole request (headers, then its body), and idle keep-alive time
DEFAULT_CLIENT_TIMEOUT = 15.0
#: peers one token may have in one torrent's swarm (more replace its least recently seen)
DEFAULT_MAX_PEERS_PER_HOST = MAX_PEERS_PER_HOST
#: open client connections from one address at most
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256  # a NAT or proxy in front of many hosts needs room
#: processes serving one port (SO_REUSEPORT)
DEFAULT_WORKERS = 1
MAX_WORKERS = 64


@dataclass
class ServeOptions:
    #: the tracker's data directory (SQLite database, CA files, TLS certificate)
    data: Path
    host: str = DEFAULT_HOST
    #: 0: any free port
    port: int = DEFAULT_PORT
    #: the URL hosts reach this tracker at
    public_url: str | None = None
    cert_lifetime: int = DEFAULT_CERT_LIFETIME
    interval: int = DEFAULT_INTERVAL
    #: seconds before a host's next announce gets fresh work (None: half the interval)
    min_interval: int | None = None
    #: postgresql://... shared by replicas (None: SQLite in the data dir)
    database: str | None = None
    #: redis://... peer store shared by replicas and workers (None: in memory)
    redis: str | None = None
    auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT
    auth_failure_window: float = DEFAULT_WINDOW
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    max_peers_per_host: int = DEFAULT_MAX_PEERS_PER_HOST
    #: open client connections per process (None: the descriptor limit less a reserve)
    max_connections: int | None = None
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    #: processes serving one port (SO_REUSEPORT); more than one needs `redis`
    workers: int = DEFAULT_WORKERS
    reuse_port: bool = False
    #: serve HTTPS with a certificate from the swarm CA (hosts pin that CA by their token)
    tls: bool = False
    #: swarm.core.logs level and format (passed on to the worker processes)
    log_level: str = "info"
    log_format: str = "text"
    #: retention: tags kept per repository, newest by publish seq, applied after each publish (None: all)
    keep: int | None = None
