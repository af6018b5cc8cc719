"""The rollout view's pure logic: who counts, percentiles, the summary line, waiting conditions."""

from __future__ import annotations

import pytest

from swarm.cli.rollout import parse_duration, reached
from swarm.core.api import PullReport
from swarm.core.errors import UsageError
from swarm.tracker.rollout import STALE_AFTER, percentile, rollout_view, visible_repositories

IMG = "sha256:" + "a" * 64


def _r(state: str, started: float = 0.0, updated: float = 0.0, image_id: str = IMG) -> PullReport:
    return PullReport("app:1", state, image_id, started=started, updated=updated)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0], 99) == 1.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0


def test_summary_counts_only_the_published_image() -> None:
    reports = [("h1", _r("loaded", 100, 141)), ("h2", _r("loaded", 100, 158)), ("h3", _r("downloading")),
               ("h4", _r("failed")), ("h5", _r("loaded", 0, 5, image_id="sha256:" + "b" * 64))]
    view = rollout_view("app:1", IMG, "b1", reports, {"h1", "h2", "h3", "h4", "h5", "h6"},
                        {"h1": 1000.0, "h2": 1000.0 - STALE_AFTER - 1}, set(), 1000.0)
    assert view.loaded == ("h1", "h2")
    assert view.missing == ("h3", "h4", "h5", "h6")
    assert view.summary_line() == "2/6 loaded, p50 41 s, p99 58 s, 1 downloading, 1 failed"
    stale = {h.host: h.stale for h in view.hosts}
    assert stale["h1"] is False and stale["h2"] is True and stale["h3"] is True


def test_revoked_hosts_leave_the_view() -> None:
    view = rollout_view("app:1", IMG, "b1", [("h1", _r("loaded", 1, 2)), ("h2", _r("loaded", 1, 2))],
                        {"h1"}, {}, {"h2"}, 10.0)
    assert view.fleet == ("h1",) and view.loaded == ("h1",)


def test_relays_are_listed_but_not_counted() -> None:
    """A relay's pull ends "cached": it seeds the image and runs nothing, so no one waits for it."""
    view = rollout_view("app:1", IMG, "b1", [("h1", _r("loaded", 1, 2)), ("r1", _r("cached", 1, 2))],
                        {"h1", "h2", "r1"}, {}, set(), 10.0)
    assert view.fleet == ("h1", "h2") and view.loaded == ("h1",) and view.missing == ("h2",)
    assert [h.host for h in view.hosts] == ["h1", "r1"]
    assert view.summary()["states"]["cached"] == 1
    assert view.summary_line().startswith("1/2 loaded")


def test_visibility_by_role() -> None:
    published = [("a/x:1", "b1"), ("a/x:2", "b2"), ("c:1", "b2")]
    assert visible_repositories("admin", "ops", published) is None
    assert visible_repositories("builder", "b2", published) == {"a/x", "c"}
    assert visible_repositories("host", "h1", published) == set()


def test_wait_conditions() -> None:
    view = {"loaded": 7, "total": 8}
    assert reached(view, 7, None) and not reached(view, 8, None)
    assert reached(view, None, 87.5) and not reached(view, None, 90)
    assert not reached(view, None, None) and reached({"loaded": 8, "total": 8}, None, None)
    assert not reached({"loaded": 0, "total": 0}, None, None)


def test_durations() -> None:
    assert parse_duration("20s") == 20 and parse_duration("5m") == 300 and parse_duration("1.5h") == 5400
    assert parse_duration("90") == 90
    for bad in ("", "soon", "-1s", "3d"):
        with pytest.raises(UsageError):
            parse_duration(bad)
