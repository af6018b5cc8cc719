"""Tokens, image references, sizes and rates."""

from __future__ import annotations

import pytest

from swarm.core.errors import UsageError
from swarm.core.refs import ImageRef, matches
from swarm.core.tokens import JoinToken, hash_secret
from swarm.core.units import parse_rate, parse_size


def test_token_round_trip_and_repr_hides_secret() -> None:
    tok = JoinToken.new("ab" * 32)
    assert JoinToken.parse(str(tok)) == tok
    assert tok.secret not in repr(tok)
    assert hash_secret(tok.secret) != tok.secret and len(hash_secret(tok.secret)) == 64


@pytest.mark.parametrize("bad", ["", "swarm1.abc.def", "swarm2." + "a" * 40 + "." + "b" * 64,
                                 "swarm1." + "A" * 40 + "." + "b" * 64])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(UsageError, match="malformed join token"):
        JoinToken.parse(bad)


def test_image_refs() -> None:
    assert ImageRef.parse("myapp") == ImageRef("myapp", "latest")
    assert ImageRef.parse("team/myapp:1.2") == ImageRef("team/myapp", "1.2")
    assert str(ImageRef.parse("myapp:1")) == "myapp:1"
    for bad in ("MyApp:1", "myapp:", ":1", "my app", "myapp:bad tag"):
        with pytest.raises(UsageError):
            ImageRef.parse(bad)


def test_watch_patterns() -> None:
    assert matches("myapp/*", ImageRef("myapp/web", "1"))
    assert not matches("myapp/*", ImageRef("other", "1"))
    assert matches("myapp:prod-*", ImageRef("myapp", "prod-7"))
    assert not matches("myapp:prod-*", ImageRef("myapp", "dev-7"))


def test_sizes_and_rates() -> None:
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("500MB") == 500 * 1000**2
    assert parse_size("0") == 0
    assert parse_rate("50MB/s") == 50 * 1000**2
    assert parse_rate("100mbit") == 12_500_000
    assert parse_rate("0") == 0
    for bad in ("fast", "10 parsecs", "-1MB"):
        with pytest.raises(UsageError):
            parse_rate(bad)
    with pytest.raises(UsageError):
        parse_size("lots")


def test_one_status_table_both_ways() -> None:
    from swarm.core.errors import (
        Forbidden,
        InvalidInput,
        NotFound,
        RateLimited,
        SwarmError,
        TrackerError,
        TrackerUnreachable,
        Unauthorized,
        UntrustedManifest,
        error_for_status,
        status_for,
    )

    for cls, status in ((Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (RateLimited, 429)):
        assert status_for(cls("x")) == status and error_for_status(status) is cls
    assert status_for(InvalidInput("x")) == status_for(UntrustedManifest("x")) == status_for(SwarmError("x")) == 400
    assert status_for(TrackerUnreachable("x")) == 502
    assert error_for_status(400) is error_for_status(500) is TrackerError


def test_log_records_are_redacted_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from swarm.core import redact

    redact.install()
    secret = "ab" * 20
    redact.add_secret("my-own-secret-value-1234")
    log = logging.getLogger("aiohttp.server")
    with caplog.at_level(logging.INFO):
        log.error("Bad status line %r", f"GET /announce/{secret}?x=1 HTTP/1.1")
        log.info("GET /t/%s/scrape", secret)
        log.warning("Authorization: Bearer %s", secret)
        log.warning("token swarm1.%s.%s and my-own-secret-value-1234", secret, "c" * 64)
        try:
            raise ValueError(f"/announce/{secret}")
        except ValueError:
            log.exception("failed")
    assert caplog.records and secret not in caplog.text and "my-own-secret" not in caplog.text
    assert redact.escape_path("a\nb") == "a\\nb"


def test_libtorrent_must_match_certificate_names_exactly() -> None:
    from swarm.engine.session import check_libtorrent

    check_libtorrent()  # the installed one
    check_libtorrent("2.0.13.0")
    for old in ("2.0.12.0", "1.2.19.0"):
        with pytest.raises(UsageError, match="by prefix"):
            check_libtorrent(old)


def test_groups_a_builder_may_reach() -> None:
    from swarm.core.groups import may_overlap, reachable_groups

    assert may_overlap("payments/*", "pay*") and may_overlap("a*z", "ab*") and may_overlap("shop", "s*")
    assert not may_overlap("payments/*", "shop/*") and not may_overlap("a*x", "b*y") and not may_overlap("a", "b")
    mappings = {"payments/*": "pci", "payments/public": "web", "shop/*": "web", "base": "base"}
    assert reachable_groups(["shop/*"], mappings) == {"web"}
    assert reachable_groups(["payments/cards"], mappings) == {"pci"}
    assert reachable_groups(["payments/*"], mappings) == {"pci", "web"}  # payments/public is web's
    assert reachable_groups(["pay*"], mappings) == {"pci", "web", "default"}  # payroll is unmapped
    assert reachable_groups(["base:prod-*"], mappings) == {"base"}  # a tag part names the repository before it
    assert reachable_groups(["*"], mappings) == {"pci", "web", "base", "default"}
    assert reachable_groups([], mappings) == set()
