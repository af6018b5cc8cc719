"""The `swarm` command: parse, call, render. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from swarm.agent import protocol
from swarm.agent.paths import socket_path
from swarm.cli.render import PullProgress, err, status_table
from swarm.tracker.cli import tracker
from swarm.core.errors import SwarmError, UsageError
from swarm.core.signing import SigningKey, parse_public_key
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.tokens import JoinToken
from swarm.core.units import parse_rate, parse_size

DATA = click.option("--data", type=click.Path(path_type=Path), envvar="SWARM_DATA",
                    help="The agent's data dir (its socket is DATA/agent.sock).")
SOCKET = click.option("--socket", type=click.Path(path_type=Path), envvar="SWARM_SOCKET",
                      help="The agent's socket, instead of --data.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="swarm")
def cli() -> None:
    """Peer-to-peer distribution of confidential Docker images."""


cli.add_command(tracker)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Make a builder signing key at PATH (mode 0600); prints its public key."""
    if path.exists():
        raise UsageError(f"{path} already exists: refusing to overwrite a key")
    key = SigningKey.generate()
    try:
        key.save(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    click.echo(key.public_text)


@cli.command()
@click.option("--tracker", "tracker_url", required=True, envvar="SWARM_TRACKER", help="Tracker URL.")
@click.option("--token", envvar="SWARM_TOKEN", help="Join token from `swarm tracker token create`.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), envvar="SWARM_TOKEN_FILE",
              help="Read the join token from this file instead (keeps it out of the process list).")
@click.option("--data", type=click.Path(path_type=Path), required=True, envvar="SWARM_DATA", help="Data dir.")
@click.option("--listen", default="0.0.0.0:6881", show_default=True, envvar="SWARM_LISTEN",
              help="HOST:PORT for peer (TLS) connections; port 0 picks one.")
@click.option("--trust", multiple=True, envvar="SWARM_TRUST", help="Builder public key to trust (repeatable).")
@click.option("--trust-file", type=click.Path(path_type=Path, dir_okay=False), envvar="SWARM_TRUST_FILE",
              help="File of builder public keys to trust, one per line (# comments).")
@click.option("--watch", multiple=True, envvar="SWARM_WATCH", help="Pull every new tag matching PATTERN.")
@click.option("--docker-host", envvar="SWARM_DOCKER_HOST", help="Docker engine URL (default: DOCKER_HOST).")
@click.option("--upload-limit", default="0", envvar="SWARM_UPLOAD_LIMIT", help="e.g. 50MB/s, 100mbit; 0 = none.")
@click.option("--download-limit", default="0", envvar="SWARM_DOWNLOAD_LIMIT", help="e.g. 50MB/s; 0 = none.")
@click.option("--cache-size", default="0", envvar="SWARM_CACHE_SIZE", help="Blob cache budget, e.g. 20GiB; 0 = none.")
@click.option("--min-seed-time", default=3600.0, type=click.FloatRange(min=0), envvar="SWARM_MIN_SEED_TIME",
              show_default=True, help="Seconds an image's blobs stay cached after it was pulled or published.")
@click.option("--metrics-listen", envvar="SWARM_METRICS_LISTEN", help="HOST:PORT to serve Prometheus /metrics on.")
def agent(tracker_url: str, token: str | None, token_file: Path | None, data: Path, listen: str,
          trust: tuple[str, ...], trust_file: Path | None, watch: tuple[str, ...],
          docker_host: str | None, upload_limit: str, download_limit: str, cache_size: str,
          min_seed_time: float, metrics_listen: str | None) -> None:
    """Run the host agent (the builder runs one too)."""
    from swarm.agent.daemon import AgentConfig, run_agent

    run_agent(AgentConfig(
        tracker=tracker_url, token=JoinToken.parse(_one_secret(token, token_file)), data=data, listen=listen,
        trust=[parse_public_key(t) for t in [*_split(trust), *_lines(trust_file)]], watch=list(_split(watch)),
        docker_host=docker_host, upload_limit=parse_rate(upload_limit),
        download_limit=parse_rate(download_limit), cache_size=parse_size(cache_size),
        min_seed_time=min_seed_time, metrics_listen=metrics_listen,
    ))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _one_secret(token: str | None, token_file: Path | None) -> str:
    if token_file is not None and token is None:
        return _read(token_file).strip()
    if token is not None and token_file is None:
        return token
    raise UsageError("give exactly one of --token and --token-file")


def _lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [ln.strip() for ln in _read(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable options also come space-separated from one environment variable."""
    return [part for v in values for part in v.split()]


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--key", type=click.Path(path_type=Path), required=True, envvar="SWARM_KEY",
              help="The builder's Ed25519 signing key.")
@click.option("--from-archive", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Read the image from a `docker save`/OCI archive instead of Docker.")
@DATA
@SOCKET
def seed(images: tuple[str, ...], key: Path, from_archive: Path | None, data: Path | None,
         socket: Path | None) -> None:
    """Export, sign, publish and seed IMAGE... through the local agent."""
    signing_key = SigningKey.load(key)
    for image in images:
        ImageRef.parse(image)
    sock = socket_path(data, socket)
    answer = protocol.call(sock, "prepare", _print_message, images=list(images), key_id=signing_key.key_id,
                           archive=str(from_archive.resolve()) if from_archive else None)
    envelopes = [signing_key.sign(Manifest.from_bytes(raw)).to_bytes() for raw in answer["manifests"]]
    result = protocol.call(sock, "publish", _print_message, envelopes=envelopes)
    for entry in result["published"]:
        click.echo(f"{entry['ref']} {entry['image_id']}")


def _print_message(msg: dict[str, Any]) -> None:
    err.print(str(msg.get("message", "")))


@cli.command()
@click.argument("images", nargs=-1, required=True)
@DATA
@SOCKET
def pull(images: tuple[str, ...], data: Path | None, socket: Path | None) -> None:
    """Download IMAGE... from the swarm and load it into Docker."""
    refs = [str(ImageRef.parse(image)) for image in images]
    sock = socket_path(data, socket)
    with PullProgress() as progress:
        result = protocol.call(sock, "pull", progress.update, refs=refs)
    for img in result["images"]:
        click.echo(f"{img['ref']} {img['image_id']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@DATA
@SOCKET
def status(as_json: bool, data: Path | None, socket: Path | None) -> None:
    """Show the local agent's images, layers, peers and cache."""
    result = protocol.call(socket_path(data, socket), "status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        status_table(result)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except SwarmError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
