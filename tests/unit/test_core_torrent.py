"""swarm/core/torrent.py (pure Python) against libtorrent, on torrents made by swarm.engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt
import pytest

from swarm.core.errors import InvalidInput, LegacyTorrent
from swarm.core.groups import group_id
from swarm.core.torrent import bdecode, bencode, check_layer_torrent, inspect_torrent
from swarm.engine.metainfo import make_torrent

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
WEB = group_id("web")


def blob(tmp_path: Path, size: int, name: str = WEB) -> tuple[Path, bytes]:
    payload = os.urandom(size)
    path = tmp_path / hashlib.sha256(payload).hexdigest()
    path.write_bytes(payload)
    return path, make_torrent(path, CA, name)


# one block, one piece, a piece and a bit (a piece layer of 2), 5 pieces (a padded merkle tree)
@pytest.mark.parametrize("size", [1, 64 * 1024, 64 * 1024 + 1, 5 * 64 * 1024 - 7])
def test_same_info_hash_as_libtorrent(tmp_path: Path, size: int) -> None:
    _path, metainfo = blob(tmp_path, size)
    ti = lt.torrent_info(metainfo)
    facts = inspect_torrent(metainfo)
    assert facts.info_hash == ti.info_hashes().v2.to_bytes()
    assert facts.info_hash[:20] == ti.info_hashes().get_best().to_bytes()  # what it announces
    assert (facts.name, facts.size, facts.private) == (WEB, size, True)
    assert ti.name() == WEB
    assert facts == check_layer_torrent(metainfo, facts.info_hash, size, CA, WEB)
    assert facts == check_layer_torrent(metainfo, facts.info_hash, size, CA)


def test_refuses_what_libtorrent_refuses(tmp_path: Path) -> None:
    _, metainfo = blob(tmp_path, 3 * 64 * 1024)
    top = bdecode(metainfo)
    (root,) = top[b"piece layers"]
    top[b"piece layers"][root] = bytes(32) + top[b"piece layers"][root][32:]
    tampered = bencode(top)
    with pytest.raises(RuntimeError):
        lt.torrent_info(tampered)
    with pytest.raises(InvalidInput, match="piece layer"):
        inspect_torrent(tampered)


def test_refuses_hybrid_multi_file_and_garbage(tmp_path: Path) -> None:
    path, _ = blob(tmp_path, 1000)
    hybrid = lt.create_torrent(lt.list_files(str(path)), 64 * 1024)
    lt.set_piece_hashes(hybrid, str(tmp_path))
    with pytest.raises(InvalidInput, match="v2-only"):
        inspect_torrent(lt.bencode(hybrid.generate()))
    (tmp_path / "dir").mkdir()
    for name in ("a", "b"):
        (tmp_path / "dir" / name).write_bytes(os.urandom(100))
    multi = lt.create_torrent(lt.list_files(str(tmp_path / "dir")), 64 * 1024, lt.create_torrent.v2_only)
    lt.set_piece_hashes(multi, str(tmp_path))
    with pytest.raises(InvalidInput, match="exactly one file"):
        inspect_torrent(lt.bencode(multi.generate()))
    for garbage in (b"", b"d4:infod4:name3:abcee", b"i1e", b"d4:infoi1ee", b"d4:infod4:name3:abcee junk"):
        with pytest.raises(InvalidInput):
            inspect_torrent(garbage)


def test_layer_checks(tmp_path: Path) -> None:
    _path, metainfo = blob(tmp_path, 1000)
    ih = inspect_torrent(metainfo).info_hash
    with pytest.raises(InvalidInput, match="info_hash does not match"):
        check_layer_torrent(metainfo, bytes(32), 1000, CA)
    with pytest.raises(InvalidInput, match="does not describe its blob"):
        check_layer_torrent(metainfo, ih, 999, CA)
    with pytest.raises(InvalidInput, match="not bound to this swarm's CA"):
        check_layer_torrent(metainfo, ih, 1000, CA.replace("MIIB", "MIIC"))
    with pytest.raises(InvalidInput, match="not after its repository's group"):
        check_layer_torrent(metainfo, ih, 1000, CA, group_id("pci"))


def test_a_torrent_named_by_digest_is_legacy(tmp_path: Path) -> None:
    """Torrents made before host groups were named after the blob's hex digest: no certificate names them."""
    path, _ = blob(tmp_path, 1000)
    legacy = make_torrent(path, CA, path.name)
    with pytest.raises(LegacyTorrent, match="seeded again"):
        check_layer_torrent(legacy, inspect_torrent(legacy).info_hash, 1000, CA)


def test_the_name_changes_the_info_hash_but_not_the_pieces(tmp_path: Path) -> None:
    """One blob, two groups: two torrents (two swarms) with the same merkle tree, so one file serves both."""
    path, web = blob(tmp_path, 200 * 1024)
    pci = make_torrent(path, CA, group_id("pci"))
    assert inspect_torrent(web).info_hash != inspect_torrent(pci).info_hash
    root = next(iter(bdecode(web)[b"piece layers"]))
    assert bdecode(pci)[b"piece layers"] == bdecode(web)[b"piece layers"] and root in bdecode(pci)[b"piece layers"]
