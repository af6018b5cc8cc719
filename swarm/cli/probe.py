"""`swarm probe URL`: one health or readiness request, for HEALTHCHECK and systemd (stdlib only, no event loop)."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from swarm.core.errors import SwarmError, UsageError

#: seconds one request may take, and between requests while waiting
TIMEOUT, PAUSE = 3.0, 0.5


def probe_once(url: str, ca: Path | None) -> str:
    """The answer's body if the status is 200; SwarmError with the reason otherwise."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"probe needs an http:// or https:// URL, not {url!r}")
    context = None
    if url.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot use CA file {ca}: {exc}") from exc
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as resp:
            return str(resp.read().decode(errors="replace")).strip()
    except urllib.error.HTTPError as exc:
        raise SwarmError(f"{url} answered {exc.code}: {exc.read().decode(errors='replace').strip()}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SwarmError(f"{url}: {reason}") from exc


def probe_until(url: str, ca: Path | None, wait: float) -> str:
    deadline = time.monotonic() + wait
    while True:
        try:
            return probe_once(url, ca)
        except UsageError:
            raise
        except SwarmError:
            if time.monotonic() + PAUSE > deadline:
                raise
            time.sleep(PAUSE)
