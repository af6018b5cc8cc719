"""`swarm keys ...`: sign the key document that hosts with --trust-root follow (see swarm/core/trust.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from swarm.cli.params import read_text
from swarm.core.errors import UsageError
from swarm.core.files import write_atomic
from swarm.core.signing import SigningKey, format_public_key
from swarm.core.trust import KeyDocument, SignedKeyDocument


@click.group()
def keys() -> None:
    """The root-signed list of builder keys, their repositories and expiry."""


@keys.command("sign")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--root-key",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    envvar="SWARM_ROOT_KEY",
    show_envvar=True,
    help="The offline root signing key (made with `swarm keygen`).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the signed document (give it to `swarm tracker keys publish`).",
)
def sign(spec: Path, root_key: Path, out: Path) -> None:
    """Sign SPEC, a JSON file: {"version": N, "keys": [{"key", "repositories", "expires"}]}."""
    try:
        parsed = json.loads(read_text(spec))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{spec} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    document = KeyDocument.from_spec(parsed)
    root = SigningKey.load(root_key)
    signed = SignedKeyDocument.sign(document, root)
    try:
        write_atomic(out, signed.to_bytes(), 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from exc
    click.echo(f"key document version {document.version}, signed by {root.public_text}")
    for line in document.describe():
        click.echo(f"  {line}")


@keys.command("show")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def show(file: Path) -> None:
    """Print a signed key document (its signature checked against the root it names)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    signed = SignedKeyDocument.from_bytes(data)
    document = signed.verify(None)
    click.echo(f"key document version {document.version}, signed by root {format_public_key(signed.root)}")
    for line in document.describe():
        click.echo(f"  {line}")
