"""The `swarm` command: parse, call, render. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from swarm.agent.api import Note
from swarm.agent.client import AgentClient
from swarm.agent.config import AgentConfig
from swarm.agent.paths import socket_path
from swarm.builder.seed import seed as seed_images
from swarm.cli.keys import keys
from swarm.cli.params import RATE, SIZE, one_secret, public_keys, split_words
from swarm.cli.render import PullProgressBars, err, status_table
from swarm.core.addresses import LISTEN, format_listen
from swarm.core.errors import SwarmError
from swarm.tracker.cli import tracker
from swarm.core.refs import ImageRef
from swarm.core.signing import SigningKey, parse_public_key
from swarm.core.tokens import JoinToken

DATA = click.option("--data", type=click.Path(path_type=Path), envvar="SWARM_DATA",
                    help="The agent's data dir (its socket is DATA/agent.sock).")
SOCKET = click.option("--socket", type=click.Path(path_type=Path), envvar="SWARM_SOCKET",
                      help="The agent's socket, instead of --data.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swarm", prog_name="swarm")
def cli() -> None:
    """Peer-to-peer distribution of confidential Docker images."""


cli.add_command(tracker)
cli.add_command(keys)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Make a builder signing key at PATH (mode 0600); prints its public key."""
    key = SigningKey.generate()
    key.save(path)
    click.echo(key.public_text)


@cli.command()
@click.option("--tracker", "tracker_url", required=True, envvar="SWARM_TRACKER", help="Tracker URL.")
@click.option("--token", envvar="SWARM_TOKEN", help="Join token from `swarm tracker token create`.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), envvar="SWARM_TOKEN_FILE",
              help="Read the join token from this file instead (keeps it out of the process list).")
@click.option("--data", type=click.Path(path_type=Path), required=True, envvar="SWARM_DATA", help="Data dir.")
@click.option("--listen", type=LISTEN, default=AgentConfig.listen, show_default=format_listen(AgentConfig.listen),
              envvar="SWARM_LISTEN", help="HOST:PORT for peer (TLS) connections; port 0 picks one.")
@click.option("--trust", multiple=True, envvar="SWARM_TRUST", help="Builder public key to trust (repeatable).")
@click.option("--trust-file", type=click.Path(path_type=Path, dir_okay=False), envvar="SWARM_TRUST_FILE",
              help="File of builder public keys to trust, one per line (# comments).")
@click.option("--trust-root", envvar="SWARM_TRUST_ROOT",
              help="Root public key: trust the builder keys of the key document it signs (`swarm keys sign`).")
@click.option("--watch", multiple=True, envvar="SWARM_WATCH", help="Pull every new tag matching PATTERN.")
@click.option("--docker-host", envvar="SWARM_DOCKER_HOST", help="Docker engine URL (default: DOCKER_HOST).")
@click.option("--upload-limit", type=RATE, default=AgentConfig.upload_limit, envvar="SWARM_UPLOAD_LIMIT",
              help="e.g. 50MB/s, 100mbit; 0 = none.")
@click.option("--download-limit", type=RATE, default=AgentConfig.download_limit, envvar="SWARM_DOWNLOAD_LIMIT",
              help="e.g. 50MB/s; 0 = none.")
@click.option("--cache-size", type=SIZE, default=AgentConfig.cache_size, envvar="SWARM_CACHE_SIZE",
              help="Blob cache budget, e.g. 20GiB; 0 = none.")
@click.option("--min-seed-time", type=click.FloatRange(min=0), default=AgentConfig.min_seed_time,
              envvar="SWARM_MIN_SEED_TIME", show_default=True,
              help="Seconds an image's blobs stay cached after it was pulled or published.")
@click.option("--metrics-listen", type=LISTEN, default=AgentConfig.metrics_listen, envvar="SWARM_METRICS_LISTEN",
              help="HOST:PORT to serve Prometheus /metrics on.")
def agent(tracker_url: str, token: str | None, token_file: Path | None, data: Path, listen: tuple[str, int],
          trust: tuple[str, ...], trust_file: Path | None, trust_root: str | None, watch: tuple[str, ...],
          docker_host: str | None, upload_limit: int, download_limit: int, cache_size: int,
          min_seed_time: float, metrics_listen: tuple[str, int] | None) -> None:
    """Run the host agent (the builder runs one too)."""
    from swarm.agent.daemon import run_agent  # loads libtorrent: only for this command

    run_agent(AgentConfig(
        tracker=tracker_url, token=JoinToken.parse(one_secret(token, token_file)), data=data, listen=listen,
        trust=public_keys(trust, trust_file), trust_root=parse_public_key(trust_root) if trust_root else None,
        watch=split_words(watch), docker_host=docker_host,
        upload_limit=upload_limit, download_limit=download_limit, cache_size=cache_size,
        min_seed_time=min_seed_time, metrics_listen=metrics_listen,
    ))


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--key", type=click.Path(path_type=Path), required=True, envvar="SWARM_KEY",
              help="The builder's Ed25519 signing key.")
@click.option("--from-archive", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Read the image from a `docker save`/OCI archive instead of Docker.")
@click.option("--expires", "expires_in", type=click.FloatRange(min=0), default=0, envvar="SWARM_EXPIRES",
              help="Seconds after which hosts refuse these manifests (republish before then); 0 = never.")
@DATA
@SOCKET
def seed(images: tuple[str, ...], key: Path, from_archive: Path | None, expires_in: float, data: Path | None,
         socket: Path | None) -> None:
    """Export, sign, publish and seed IMAGE... through the local agent."""
    signing_key = SigningKey.load(key)
    client = AgentClient(socket_path(data, socket))
    for entry in seed_images(client, images, signing_key, from_archive, _print_note, expires_in):
        click.echo(f"{entry.ref} {entry.image_id}")


def _print_note(note: Note) -> None:
    err.print(note.message)


@cli.command()
@click.argument("images", nargs=-1, required=True)
@DATA
@SOCKET
def pull(images: tuple[str, ...], data: Path | None, socket: Path | None) -> None:
    """Download IMAGE... from the swarm and load it into Docker."""
    refs = [str(ImageRef.parse(image)) for image in images]
    client = AgentClient(socket_path(data, socket))
    with PullProgressBars() as bars:
        result = client.pull(refs, bars.update)
    for img in result.images:
        click.echo(f"{img.ref} {img.image_id}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@DATA
@SOCKET
def status(as_json: bool, data: Path | None, socket: Path | None) -> None:
    """Show the local agent's images, layers, peers and cache."""
    result = AgentClient(socket_path(data, socket)).status()
    if as_json:
        click.echo(json.dumps(result.to_map(), indent=2))
    else:
        status_table(result)


def main() -> None:
    """The entry point: every error becomes one line on stderr and its exit code, here and only here."""
    try:
        cli.main(prog_name="swarm", standalone_mode=False)
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
