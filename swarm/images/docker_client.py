"""Connecting to a Docker engine, and naming it in error messages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions

from swarm.core.errors import DockerError, DockerUnreachable

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: seconds a single socket read/write may block; streams (save, load, build)
#: only wait this long between two chunks, not for the whole transfer.
TIMEOUT = 300


def connect(docker_host: str | None = None, timeout: int = TIMEOUT) -> Any:
    """A `docker.APIClient` for `docker_host` (default: $DOCKER_HOST, then the
    standard socket), after checking the engine answers a ping."""
    host = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    try:
        # "auto" asks the engine for its API version (engine 20.10 speaks 1.41,
        # older than the SDK's default).
        api = docker.APIClient(base_url=host, version="auto", timeout=timeout)
        api.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnreachable(f"cannot reach Docker at {host}: {_short(exc)}") from exc
    except (requests.exceptions.RequestException, OSError) as exc:
        raise DockerUnreachable(f"cannot reach Docker at {host}: {_short(exc)}") from exc
    return api


def host_of(api: Any) -> str:
    """The engine address of an APIClient, as a user would write it."""
    socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
    if isinstance(socket_path, str):
        return "unix://" + socket_path
    return str(getattr(api, "base_url", "?"))


@contextmanager
def docker_errors(api: Any, what: str) -> Iterator[None]:
    """Convert SDK / transport failures inside the block into swarm errors.

    Connection failures become DockerUnreachable; other API errors become
    DockerError carrying Docker's own message. `what` says what we were doing.
    """
    try:
        yield
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise DockerUnreachable(f"cannot reach Docker at {host_of(api)}: {_short(exc)}") from exc
    except docker.errors.APIError as exc:
        raise DockerError(f"{what}: {api_error_message(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise DockerError(f"{what}: {_short(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise DockerError(f"{what}: {_short(exc)}") from exc


def api_error_message(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return _one_line(explanation if isinstance(explanation, str) else repr(explanation))
    return _short(exc)


def _short(exc: BaseException) -> str:
    # requests/urllib3 nest their causes in long reprs; keep the innermost reason.
    text = str(exc) or type(exc).__name__
    for reason in (
        "No such file or directory",
        "Connection refused",
        "Permission denied",
        "timed out",
        "Name or service not known",
    ):
        if reason in text:
            return reason
    return _one_line(text)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
