"""The rollout view of a real fleet: a tracker process, a builder and three host agents (real
libtorrent), each host with its own dockerd; `swarm rollout` and `swarm tracker hosts` read it.

host3 reaches the tracker through a proxy that can refuse its reports (503), as a tracker whose
database is away would. The builder seeds from `docker save` archives, so that no host's engine
holds the images before its pull.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from swarm.images.synthetic import build_image, payload
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import SWARM, Agent, Tracker, run_swarm, wait_for
from tests.support.proxy import RefusingProxy

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOSTS = ("host1", "host2", "host3")
LIVE_ORDER = ["resolving", "downloading", "verifying", "loading"]


@dataclass
class Fleet:
    root: Path
    tracker: Tracker
    admin: str
    key: Path
    builder: Agent
    hosts: dict[str, Agent]
    engines: dict[str, Dockerd]
    proxy: RefusingProxy
    archives: dict[str, Path]

    def remote(self, *args: str, token: str | None = None, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_swarm(*args, "--tracker", self.tracker.url, "--token", token or self.admin, check=check,
                         timeout=timeout)

    def view(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(run_swarm("rollout", "status", ref, "--json",
                                                    "--data", str(self.tracker.data)).stdout)
        return data


def _save(api: Any, ref: str, path: Path) -> Path:
    with open(path, "wb") as f:
        for chunk in api.get_image(ref):
            f.write(chunk)
    api.remove_image(ref, force=True)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("rollout")
    engines = dict(zip(HOSTS, [Dockerd().start() for _ in HOSTS]))
    tracker = Tracker.start(root)
    proxy = RefusingProxy(tracker.url).start()
    key = root / "builder.key"
    pubkey = run_swarm("keygen", str(key)).stdout.strip()
    api = engines["host1"].api()
    archives = {}
    for ref, seed in (("myapp:1", 1), ("myapp:2", 2)):
        build_image(api, ref, [{"/data/big.bin": payload(4 * 1024 * 1024, seed=seed)}, {"/hello.txt": b"hi\n"}],
                    cmd=["/bin/busybox", "cat", "/hello.txt"])
        archives[ref] = _save(api, ref, root / f"{ref.replace(':', '-')}.tar")
    agents: list[Agent] = []
    try:
        builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder"),
                              "--docker-host", engines["host1"].host)
        agents.append(builder)
        hosts = {}
        for name in HOSTS:
            url = proxy.url if name == "host3" else tracker.url
            hosts[name] = Agent.start(root, name, url, tracker.token(name, "host"), "--trust", pubkey,
                                      "--docker-host", engines[name].host)
            agents.append(hosts[name])
        admin = tracker.token("ops", "admin")
        yield Fleet(root, tracker, admin, key, builder, hosts, engines, proxy, archives)
    finally:
        for agent in agents:
            agent.stop()
        proxy.stop()
        tracker.proc.stop()
        stop_all(list(engines.values()))


def _seed(fleet: Fleet, ref: str) -> str:
    out = fleet.builder.swarm("seed", ref, "--key", str(fleet.key), "--from-archive", str(fleet.archives[ref]))
    return out.stdout.split()[-1]


def _pull(agent: Agent, ref: str) -> float:
    started = time.monotonic()
    agent.swarm("pull", ref, timeout=240)
    return time.monotonic() - started


def _loaded(fleet: Fleet, ref: str) -> set[str]:
    return {h["host"] for h in fleet.view(ref)["hosts"] if h["state"] == "loaded" and h["current"]}


@pytest.fixture(scope="module")
def rolled_out(fleet: Fleet) -> str:
    """myapp:1 on every host; `rollout wait --hosts 3` runs through it, and host3's reports are
    refused while it pulls. Returns the image id."""
    image_id = _seed(fleet, "myapp:1")
    waiter = subprocess.Popen([*SWARM, "rollout", "wait", "myapp:1", "--hosts", "3", "--timeout", "240s",
                               "--tracker", fleet.tracker.url, "--token", fleet.admin],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(lambda n: _pull(fleet.hosts[n], "myapp:1"), ("host1", "host2")))
        wait_for(lambda: _loaded(fleet, "myapp:1") == {"host1", "host2"}, 60, "two hosts loaded", interval=0.5)
        assert waiter.poll() is None, "rollout wait returned before the third host loaded"

        fleet.proxy.refusing = True
        _pull(fleet.hosts["host3"], "myapp:1")  # completes while its reports are refused
        assert fleet.proxy.refused > 0
        assert "host3" not in _loaded(fleet, "myapp:1")
        assert waiter.poll() is None, "rollout wait returned before host3's load was reported"
        fleet.proxy.refusing = False

        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err
        assert "3/3 loaded" in out
        assert _loaded(fleet, "myapp:1") == set(HOSTS)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    return image_id


def test_rollout_status_shows_every_hosts_stages_and_image(fleet: Fleet, rolled_out: str) -> None:
    view = json.loads(fleet.remote("rollout", "status", "myapp:1", "--json").stdout)
    assert view["image_id"] == rolled_out
    assert (view["loaded"], view["total"], view["missing"]) == (3, 3, [])
    assert view["summary"].startswith("3/3 loaded, p50 ") and view["summary"].endswith("0 downloading, 0 failed")
    for h in view["hosts"]:
        assert h["state"] == "loaded" and h["image_id"] == rolled_out and h["receipt"] is True, h
        assert [s["name"] for s in h["stages"]] == LIVE_ORDER, h
        starts = [s["started"] for s in h["stages"]]
        assert starts == sorted(starts) and h["seconds"] > 0
        assert h["done"] == h["total"] > 4 * 1024 * 1024 * 0.9
        assert h["from_peers"] + h["from_builder"] >= h["total"] * 0.9
    table = fleet.remote("rollout", "status", "myapp:1").stdout
    assert "host3" in table and "3/3 loaded" in table


def test_delayed_reports_arrived_and_the_agent_said_so(fleet: Fleet, rolled_out: str) -> None:
    log = fleet.hosts["host3"].proc.text()
    assert "rollout report not delivered" in log and "delivered again" in log


def test_tracker_hosts_lists_the_fleet(fleet: Fleet, rolled_out: str) -> None:
    rows = {h["name"]: h for h in json.loads(fleet.remote("tracker", "hosts", "--json").stdout)}
    assert set(rows) == {"builder1", *HOSTS}
    for name in HOSTS:
        h = rows[name]
        assert h["role"] == "host" and h["version"] and h["images_loaded"] >= 1 and not h["stale"], h
        assert h["cert_not_after"] > time.time() and h["cache_bytes"] > 0 and h["address"] == "127.0.0.1"
    local = run_swarm("tracker", "hosts", "--data", str(fleet.tracker.data)).stdout
    assert all(name in local for name in HOSTS)


def test_host_tokens_see_nothing_of_the_fleet(fleet: Fleet, rolled_out: str) -> None:
    token = fleet.tracker.token("nosy", "host")
    for args in (("rollout", "status", "myapp:1"), ("tracker", "hosts"), ("rollout", "wait", "myapp:1")):
        result = fleet.remote(*args, token=token, check=False)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and "host" in result.stderr and "Traceback" not in result.stderr


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path("/tmp/swarm-fleet-page.png")


def test_fleet_page_in_a_real_browser(fleet: Fleet, rolled_out: str) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: apt-get install chromium (scripts/setup.sh does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    url = fleet.tracker.url + "/ui"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            # without a session: the login form and nothing else
            page.goto(url)
            assert page.locator("form#login").is_visible()
            assert page.locator("#rollouts").count() == 0 and "host1" not in page.content()
            assert page.request.get(fleet.tracker.url + "/ui/state").status == 401
            # a host token may not log in; a wrong one neither
            for token, status in ((fleet.tracker.token("peeker", "host"), 403), ("swarm1." + "0" * 40, 401)):
                page.fill("#token", token)
                with page.expect_response(lambda r: r.url.endswith("/ui/login")) as answer:
                    page.click("button[type=submit]")
                assert answer.value.status == status
                assert page.locator("#message").inner_text() and page.locator("#rollouts").count() == 0
            # an admin: the rollout with 3/3 hosts and a row per host
            page.fill("#token", fleet.admin)
            page.click("button[type=submit]")
            card = page.locator('article[data-ref="myapp:1"]')
            card.locator(".done").filter(has_text="3/3 hosts").wait_for(timeout=15_000)
            rows = card.locator("tr.host")
            assert rows.count() == 3
            for name in HOSTS:
                assert card.locator(f'tr[data-host="{name}"] .state').inner_text() == "loaded"
            assert card.locator("svg.cdf path.curve").count() == 1
            page.locator('#hosts tr[data-host="host3"]').wait_for(timeout=10_000)
            assert fleet.admin.split(".")[1] not in page.url
            cookie = next(c for c in context.cookies() if c["name"] == "swarm_session")
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000
        finally:
            browser.close()


def test_fleet_page_login_refuses_other_origins(fleet: Fleet) -> None:
    import requests

    for headers in ({"Origin": "http://evil.invalid"}, {}):
        resp = requests.post(fleet.tracker.url + "/ui/login", data={"token": fleet.admin}, headers=headers,
                             allow_redirects=False, timeout=10)
        assert resp.status_code == 403 and "swarm_session" not in resp.cookies
    resp = requests.post(fleet.tracker.url + "/ui/login", data={"token": fleet.admin},
                         headers={"Origin": fleet.tracker.url}, allow_redirects=False, timeout=10)
    assert resp.status_code == 303 and "HttpOnly" in resp.headers["Set-Cookie"]
    state = requests.get(fleet.tracker.url + "/ui/state", cookies={"swarm_session": resp.cookies["swarm_session"]},
                         timeout=10)
    assert state.status_code == 200 and state.json()["me"] == {"name": "ops", "role": "admin"}
    forged = resp.cookies["swarm_session"][:-4] + "0000"
    assert requests.get(fleet.tracker.url + "/ui/state", cookies={"swarm_session": forged},
                        timeout=10).status_code == 401


def test_rollout_wait_names_the_host_whose_docker_is_down(fleet: Fleet, rolled_out: str) -> None:
    image_id = _seed(fleet, "myapp:2")
    fleet.engines["host3"].stop()
    stuck = subprocess.Popen([*SWARM, "pull", "myapp:2", "--data", str(fleet.hosts["host3"].data)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(lambda n: _pull(fleet.hosts[n], "myapp:2"), ("host1", "host2")))
        started = time.monotonic()
        result = fleet.remote("rollout", "wait", "myapp:2", "--timeout", "20s", check=False, timeout=90)
        assert result.returncode == 1
        assert time.monotonic() - started >= 19
        assert "host3" in result.stderr and "2/3 loaded" in result.stderr and "Traceback" not in result.stderr
        assert "host1" not in result.stderr.split("missing:")[1]
        ok = fleet.remote("rollout", "wait", "myapp:2", "--hosts", "2", "--timeout", "20s")
        assert ok.stdout.startswith("2/3 loaded")
        host3 = {h["host"]: h for h in fleet.view("myapp:2")["hosts"]}.get("host3")
        assert host3 is not None and host3["image_id"] == image_id
    finally:
        stuck.kill()
        stuck.wait()
