"""The `swarm` command: parse, call, render. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from swarm.agent.api import Note
from swarm.agent.client import AgentClient
from swarm.agent.config import AgentConfig
from swarm.agent.paths import AgentPaths, socket_path
from swarm.builder.seed import seed as seed_images
from swarm.cli.config import AGENT_CONFIG, config_option, default_agent_data
from swarm.cli.keys import keys
from swarm.cli.params import RATE, SIZE, one_secret, public_keys, split_words
from swarm.cli.progress import pull_view
from swarm.cli.render import err, pulled_note, status_table
from swarm.cli.rollout import hosts as tracker_hosts
from swarm.cli.rollout import image_rm, rollout
from swarm.core import logs
from swarm.core.addresses import LISTEN, format_listen
from swarm.core.errors import SwarmError
from swarm.core.logs import DEFAULT_FORMAT, DEFAULT_LEVEL, FORMATS, LEVELS
from swarm.core.refs import ImageRef
from swarm.core.signing import SigningKey, parse_public_key
from swarm.core.tokens import JoinToken
from swarm.tracker.cli import image, tracker

DATA = click.option(
    "--data",
    type=click.Path(path_type=Path),
    envvar="SWARM_DATA",
    show_envvar=True,
    help="The agent's data dir (its socket is DATA/agent.sock)  "
    f"[default: {default_agent_data()}, if an agent runs there]",
)
SOCKET = click.option(
    "--socket",
    type=click.Path(path_type=Path),
    envvar="SWARM_SOCKET",
    show_envvar=True,
    help="The agent's socket, instead of --data.",
)
AGENT_FILE = config_option(AGENT_CONFIG, strict=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swarm", prog_name="swarm")
def cli() -> None:
    """Peer-to-peer distribution of confidential Docker images."""


cli.add_command(tracker)
tracker.add_command(tracker_hosts)
image.add_command(image_rm)
cli.add_command(rollout)
cli.add_command(keys)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Make a builder signing key at PATH (mode 0600); prints its public key."""
    key = SigningKey.generate()
    key.save(path)
    click.echo(key.public_text)


LOG_LEVEL = click.option(
    "--log-level",
    type=click.Choice(LEVELS),
    default=DEFAULT_LEVEL,
    show_default=True,
    envvar="SWARM_LOG_LEVEL",
    show_envvar=True,
    help="Least severe log level shown.",
)
LOG_FORMAT = click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default=DEFAULT_FORMAT,
    show_default=True,
    envvar="SWARM_LOG_FORMAT",
    show_envvar=True,
    help="text: one line per event; json: one JSON object per line.",
)


@cli.command()
@config_option(AGENT_CONFIG, strict=True)
@click.option("--tracker", "tracker_url", required=True, envvar="SWARM_TRACKER", show_envvar=True, help="Tracker URL.")
@click.option("--token", envvar="SWARM_TOKEN", show_envvar=True, help="Join token from `swarm tracker token create`.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SWARM_TOKEN_FILE",
    show_envvar=True,
    help="Read the join token from this file instead (keeps it out of the process list).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=default_agent_data,
    show_default=str(default_agent_data()),
    envvar="SWARM_DATA",
    show_envvar=True,
    help="Data dir (identity, blobs, agent.sock).",
)
@click.option(
    "--listen",
    type=LISTEN,
    default=AgentConfig.listen,
    show_default=format_listen(AgentConfig.listen),
    envvar="SWARM_LISTEN",
    show_envvar=True,
    help="HOST:PORT for peer (TLS) connections; port 0 picks one.",
)
@click.option(
    "--trust", multiple=True, envvar="SWARM_TRUST", show_envvar=True, help="Builder public key to trust (repeatable)."
)
@click.option(
    "--trust-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SWARM_TRUST_FILE",
    show_envvar=True,
    help="File of builder public keys to trust, one per line (# comments).",
)
@click.option(
    "--trust-root",
    envvar="SWARM_TRUST_ROOT",
    show_envvar=True,
    help="Root public key: trust the builder keys of the key document it signs (`swarm keys sign`).",
)
@click.option(
    "--watch", multiple=True, envvar="SWARM_WATCH", show_envvar=True, help="Pull every new tag matching PATTERN."
)
@click.option(
    "--docker-host", envvar="SWARM_DOCKER_HOST", show_envvar=True, help="Docker engine URL (default: DOCKER_HOST)."
)
@click.option(
    "--upload-limit",
    type=RATE,
    default=AgentConfig.upload_limit,
    envvar="SWARM_UPLOAD_LIMIT",
    show_envvar=True,
    help="e.g. 50MB/s, 100mbit; 0 = none.",
)
@click.option(
    "--download-limit",
    type=RATE,
    default=AgentConfig.download_limit,
    envvar="SWARM_DOWNLOAD_LIMIT",
    show_envvar=True,
    help="e.g. 50MB/s; 0 = none.",
)
@click.option(
    "--cache-size",
    type=SIZE,
    default=AgentConfig.cache_size,
    envvar="SWARM_CACHE_SIZE",
    show_envvar=True,
    help="Blob cache budget, e.g. 20GiB; 0 = none.",
)
@click.option(
    "--min-seed-time",
    type=click.FloatRange(min=0),
    default=AgentConfig.min_seed_time,
    envvar="SWARM_MIN_SEED_TIME",
    show_default=True,
    show_envvar=True,
    help="Seconds an image's blobs stay cached after it was pulled or published.",
)
@click.option(
    "--metrics-listen",
    type=LISTEN,
    default=AgentConfig.metrics_listen,
    envvar="SWARM_METRICS_LISTEN",
    show_envvar=True,
    help="HOST:PORT to serve Prometheus /metrics, /healthz and /readyz on.",
)
@click.option(
    "--tracker-wait",
    type=click.FloatRange(min=0),
    default=AgentConfig.tracker_wait,
    show_default=True,
    envvar="SWARM_TRACKER_WAIT",
    show_envvar=True,
    help="Seconds to keep retrying an unreachable tracker at start (0: forever).",
)
@click.option(
    "--relay/--no-relay",
    default=AgentConfig.relay,
    envvar="SWARM_RELAY",
    show_envvar=True,
    help="Run without Docker: pulls download, verify and seed into the cache (a local seeder).",
)
@click.option(
    "--load-while-downloading/--load-after-download",
    default=AgentConfig.load_while_downloading,
    envvar="SWARM_LOAD_WHILE_DOWNLOADING",
    show_envvar=True,
    help="Download layers in image order and load each into Docker once verified (default), "
    "or load the image once every layer is here.",
)
@click.option(
    "--load-window",
    type=SIZE,
    default=AgentConfig.load_window,
    envvar="SWARM_LOAD_WINDOW",
    show_envvar=True,
    help="Loading while downloading: fetch the lowest unfinished layers, at least two and this many bytes, at once.",
)
@LOG_LEVEL
@LOG_FORMAT
def agent(**params: Any) -> None:
    """Run the host agent (the builder runs one too). SIGHUP reloads limits, watch, trust and log level."""
    from swarm.agent.daemon import run_agent  # loads libtorrent: only for this command

    config = agent_config(params)
    logs.configure(config.log_level, params["log_format"])
    raw_args = _own_args("agent")
    run_agent(config, reload=lambda: agent_config(agent.make_context("agent", list(raw_args)).params))


def agent_config(params: dict[str, Any]) -> AgentConfig:
    """The agent's settings from its parsed options (at start, and again on SIGHUP)."""
    return AgentConfig(
        tracker=params["tracker_url"],
        token=JoinToken.parse(one_secret(params["token"], params["token_file"])),
        data=params["data"],
        listen=params["listen"],
        trust=public_keys(params["trust"], params["trust_file"]),
        trust_root=parse_public_key(params["trust_root"]) if params["trust_root"] else None,
        watch=split_words(params["watch"]),
        docker_host=params["docker_host"],
        upload_limit=params["upload_limit"],
        download_limit=params["download_limit"],
        cache_size=params["cache_size"],
        min_seed_time=params["min_seed_time"],
        metrics_listen=params["metrics_listen"],
        tracker_wait=params["tracker_wait"],
        relay=params["relay"],
        load_while_downloading=params["load_while_downloading"],
        load_window=params["load_window"],
        log_level=params["log_level"],
    )


def _own_args(command: str) -> list[str]:
    """This process's arguments after the subcommand's name, to parse them again on reload."""
    argv = sys.argv[1:]
    return argv[argv.index(command) + 1 :] if command in argv else []


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    required=True,
    envvar="SWARM_KEY",
    show_envvar=True,
    help="The builder's Ed25519 signing key.",
)
@click.option(
    "--from-archive",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Read the image from a `docker save`/OCI archive instead of Docker.",
)
@click.option(
    "--expires",
    "expires_in",
    type=click.FloatRange(min=0),
    default=0,
    envvar="SWARM_EXPIRES",
    show_envvar=True,
    help="Seconds after which hosts refuse these manifests (republish before then); 0 = never.",
)
@AGENT_FILE
@DATA
@SOCKET
def seed(
    images: tuple[str, ...],
    key: Path,
    from_archive: Path | None,
    expires_in: float,
    data: Path | None,
    socket: Path | None,
) -> None:
    """Export, sign, publish and seed IMAGE... through the local agent."""
    signing_key = SigningKey.load(key)
    client = AgentClient(_socket(data, socket))
    for entry in seed_images(client, images, signing_key, from_archive, _print_note, expires_in):
        click.echo(f"{entry.ref} {entry.image_id}")


def _print_note(note: Note) -> None:
    err.print(note.message)


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--seed",
    "reseed",
    is_flag=True,
    help="Fetch the layers even of an image Docker already holds, so this host seeds it again.",
)
@click.option("--json", "as_json", is_flag=True, help="Progress and results as JSON lines on stdout.")
@AGENT_FILE
@DATA
@SOCKET
def pull(images: tuple[str, ...], reseed: bool, as_json: bool, data: Path | None, socket: Path | None) -> None:
    """Download IMAGE... from the swarm and load it into Docker.

    NAME:TAG@sha256:ID loads NAME:TAG only if its image ID is still ID."""
    refs = [ImageRef.parse(image, digest=True).pinned for image in images]
    client = AgentClient(_socket(data, socket))
    with pull_view(as_json, err) as view:
        result = client.pull(refs, view.update, seed=reseed)
    for img in result.images:
        view.pulled(img, pulled_note(img))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@AGENT_FILE
@DATA
@SOCKET
def status(as_json: bool, data: Path | None, socket: Path | None) -> None:
    """Show the local agent's images, layers, peers and cache."""
    result = AgentClient(_socket(data, socket)).status()
    if as_json:
        click.echo(json.dumps(result.to_map(), indent=2))
    else:
        status_table(result)


@cli.command()
@click.argument("url", envvar="SWARM_PROBE_URL")
@click.option(
    "--ca",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SWARM_PROBE_CA",
    show_envvar=True,
    help="Verify an https:// URL against this CA (the tracker's DATA/ca.pem).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    envvar="SWARM_PROBE_WAIT",
    show_envvar=True,
    help="Keep asking for up to this many seconds until the answer is 200.",
)
def probe(url: str, ca: Path | None, wait: float) -> None:
    """Ask a /healthz or /readyz URL (or $SWARM_PROBE_URL): exit 0 on 200, else 1 with the reason."""
    from swarm.cli.probe import probe_until

    click.echo(probe_until(url, ca, wait))


def _socket(data: Path | None, socket: Path | None) -> Path:
    """--socket, --data, else the default data dir's socket if an agent made it there."""
    if data is None and socket is None:
        default = AgentPaths(default_agent_data()).socket
        if default.exists():
            return default
    return socket_path(data, socket)


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
