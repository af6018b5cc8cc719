"""The rollout endpoints of the real tracker over real HTTP: reports, receipts, who may look."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from swarm.core import wire
from swarm.core.api import MAX_PULLS_PER_REPORT, EnrollResponse, Heartbeat, PullReport, ReportBatch, Stage
from swarm.core.certs import make_csr, new_private_key
from swarm.core.receipts import LoadClaim, sign_receipt, verify_receipt
from swarm.core.signing import SigningKey
from swarm.core.tokens import JoinToken
from swarm.tracker.ca import CertificateAuthority
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.manifests import make_signed_manifest


@dataclass
class Host:
    token: JoinToken
    key: ec.EllipticCurvePrivateKey
    cert: str


@dataclass
class Rig:
    url: str
    service: TrackerService
    http: aiohttp.ClientSession
    admin: JoinToken
    builder: JoinToken
    image_id: str
    hosts: dict[str, Host]

    async def call(self, method: str, path: str, token: JoinToken | None, body: bytes | None = None
                   ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token.secret}"} if token else {}
        async with self.http.request(method, self.url + path, data=body, headers=headers) as resp:
            data = await resp.read()
            return resp.status, wire.unpack(data) if data else None

    async def report(self, name: str, *pulls: PullReport, heartbeat: Heartbeat | None = None) -> tuple[int, Any]:
        return await self.call("POST", "/v1/reports", self.hosts[name].token,
                               wire.pack(ReportBatch(heartbeat, pulls).to_map()))

    def loaded(self, name: str, image_id: str | None = None, ref: str = "demo/app:v1",
               key: ec.EllipticCurvePrivateKey | None = None, claim_host: str | None = None) -> PullReport:
        host = self.hosts[name]
        now = time.time()
        image = image_id or self.image_id
        receipt = sign_receipt(key or host.key, host.cert, LoadClaim(claim_host or name, ref, image, int(now)))
        return PullReport(ref, "loaded", image, 100, 100, 60, 40,
                          (Stage("resolving", now - 5, 1), Stage("downloading", now - 4, 3),
                           Stage("loading", now - 1, 1)), "", now - 5, now, receipt)


HB = Heartbeat("0.1.0", 1234, 0, int(time.time()) + 3600)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    service = open_service(ServeOptions(tmp_path / "data", cert_lifetime=600, auth_failure_limit=1000))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    work = tmp_path / "work"
    work.mkdir()
    signing_key = SigningKey.generate()
    builder = service.create_token("b1", "builder", signing_key.public_raw)
    admin = service.create_token("ops", "admin")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        envelope = make_signed_manifest(work, service.ca.cert_pem, signing_key, "demo/app", "v1")
        async with http.post(url + "/v1/manifests", data=envelope.to_bytes(),
                             headers={"Authorization": f"Bearer {builder.secret}"}) as resp:
            assert resp.status == 200
            image_id = wire.unpack_map(await resp.read())["image_id"]
        hosts = {}
        for name in ("h1", "h2"):
            token = service.create_token(name, "host")
            key = new_private_key()
            async with http.post(url + "/v1/enroll", data=wire.pack({"csr": make_csr(key, "x")}),
                                 headers={"Authorization": f"Bearer {token.secret}"}) as resp:
                assert resp.status == 200
                cert = EnrollResponse.from_map(wire.unpack_map(await resp.read())).certificate
            hosts[name] = Host(token, key, cert)
        yield Rig(url, service, http, admin, builder, image_id, hosts)
    await runner.cleanup()


async def test_reports_make_the_rollout_view(rig: Rig) -> None:
    now = time.time()
    assert (await rig.report("h1", heartbeat=HB))[0] == 200
    downloading = PullReport("demo/app:v1", "downloading", rig.image_id, 30, 100, 20, 10,
                             (Stage("resolving", now - 2, 1), Stage("downloading", now - 1, 1)), "", now - 2, now)
    assert (await rig.report("h2", downloading, heartbeat=HB))[0] == 200
    assert (await rig.report("h1", rig.loaded("h1")))[0] == 200

    status, view = await rig.call("GET", "/v1/rollouts/demo/app:v1", rig.admin)
    assert status == 200
    assert (view["loaded"], view["total"], view["missing"]) == (1, 2, ["h2"])
    assert view["summary"] == "1/2 loaded, p50 5.0 s, p99 5.0 s, 1 downloading, 0 failed"
    by_host = {h["host"]: h for h in view["hosts"]}
    assert [s["name"] for s in by_host["h1"]["stages"]] == ["resolving", "downloading", "loading"]
    assert by_host["h1"]["receipt"] is True and by_host["h1"]["image_id"] == rig.image_id
    assert by_host["h2"]["state"] == "downloading" and by_host["h2"]["done"] == 30

    status, hosts = await rig.call("GET", "/v1/hosts", rig.admin)
    assert status == 200
    rows = {h["name"]: h for h in hosts["hosts"]}
    assert rows["h1"]["version"] == "0.1.0" and rows["h1"]["images_loaded"] == 1 and rows["h1"]["stale"] is False
    assert rows["b1"]["last_seen"] is None and "ops" not in rows  # admins run no agent

    status, listing = await rig.call("GET", "/v1/rollouts", rig.admin)
    assert [(r["ref"], r["loaded"], r["total"]) for r in listing["rollouts"]] == [("demo/app:v1", 1, 2)]

    async with rig.http.get(rig.url + "/metrics") as resp:
        text = await resp.text()
    assert 'swarm_tracker_rollout_hosts_loaded{ref="demo/app:v1"} 1.0' in text
    assert 'swarm_tracker_rollout_hosts_total{ref="demo/app:v1"} 2.0' in text
    assert "swarm_tracker_rollout_time_to_loaded_seconds_count 1.0" in text


async def test_latest_state_wins_and_an_older_image_does_not_count(rig: Rig) -> None:
    await rig.report("h1", heartbeat=HB)
    old = rig.loaded("h1", image_id="sha256:" + "0" * 64)
    assert (await rig.report("h1", old))[0] == 200
    _, view = await rig.call("GET", "/v1/rollouts/demo/app:v1", rig.admin)
    assert view["loaded"] == 0 and view["hosts"][0]["current"] is False
    assert (await rig.report("h1", rig.loaded("h1")))[0] == 200
    _, view = await rig.call("GET", "/v1/rollouts/demo/app:v1", rig.admin)
    assert view["loaded"] == 1 and len(view["hosts"]) == 1


async def test_signed_receipts_verify_and_forged_ones_are_refused(rig: Rig) -> None:
    good = rig.loaded("h1")
    assert good.receipt is not None
    claim = verify_receipt(good.receipt, rig.service.ca.cert)
    assert (claim.host, claim.ref, claim.image_id) == ("h1", "demo/app:v1", rig.image_id)

    forged = {
        "another key, h1's certificate": rig.loaded("h1", key=new_private_key()),
        "h1 vouching for h2": rig.loaded("h1", claim_host="h2"),
        "h2's receipt sent by h1": replace(rig.loaded("h1"), receipt=rig.loaded("h2").receipt),
        "a receipt for another image": replace(good, image_id="sha256:" + "1" * 64),
        "no receipt": replace(good, receipt=None),
    }
    # a certificate from another CA, for the right name
    other_ca = CertificateAuthority.load_or_create(rig.service.data_dir.parent / "other-ca")
    key = new_private_key()
    foreign = other_ca.sign_csr(make_csr(key, "x"), "h1", 600, []).pem
    now = time.time()
    forged["a foreign CA's certificate"] = replace(good, receipt=sign_receipt(
        key, foreign, LoadClaim("h1", "demo/app:v1", rig.image_id, int(now))))
    for what, report in forged.items():
        status, body = await rig.report("h1", report)
        assert status == 400, what
        assert body["error"], what
    _, view = await rig.call("GET", "/v1/rollouts/demo/app:v1", rig.admin)
    assert view["hosts"] == [] and view["loaded"] == 0


async def test_who_may_look(rig: Rig) -> None:
    await rig.report("h1", rig.loaded("h1"), heartbeat=HB)
    host = rig.hosts["h1"].token
    for path in ("/v1/hosts", "/v1/rollouts", "/v1/rollouts/demo/app:v1", "/v1/rollouts/other:1"):
        status, body = await rig.call("GET", path, host)
        assert status == 403, path
        assert "host" in body["error"]
    # a builder sees the rollouts of what it publishes, not the hosts, not other repositories
    assert (await rig.call("GET", "/v1/hosts", rig.builder))[0] == 403
    status, view = await rig.call("GET", "/v1/rollouts/demo/app:v1", rig.builder)
    assert status == 200 and view["loaded"] == 1
    other = rig.service.create_token("b2", "builder", SigningKey.generate().public_raw)
    assert (await rig.call("GET", "/v1/rollouts/demo/app:v1", other))[0] == 403
    assert (await rig.call("GET", "/v1/rollouts", other)) == (200, {"rollouts": []})
    assert (await rig.call("GET", "/v1/rollouts", None))[0] == 401
    # an admin publishes nothing, enrolls not, reports not
    assert (await rig.call("POST", "/v1/enroll", rig.admin, wire.pack({"csr": make_csr(new_private_key(), "x")}))
            )[0] == 403
    assert (await rig.call("POST", "/v1/reports", rig.admin, wire.pack(ReportBatch(HB, ()).to_map())))[0] == 403
    assert (await rig.call("POST", "/v1/manifests", rig.admin, b"\x80"))[0] == 403


async def test_reports_are_bounded(rig: Rig) -> None:
    many = tuple(PullReport(f"demo/app:t{i}", "resolving") for i in range(MAX_PULLS_PER_REPORT + 1))
    status, body = await rig.report("h1", *many)
    assert status == 400 and "at most" in body["error"]
    status, _ = await rig.call("POST", "/v1/reports", rig.hosts["h1"].token, b"\x00" * (65 * 1024))
    assert status in (400, 413)
    for garbage in (b"", b"\xc1", wire.pack([1]), wire.pack({"pulls": [{"ref": "demo/app:v1", "state": "x"}]}),
                    wire.pack({"pulls": [{"ref": "NOT A REF", "state": "resolving"}]}),
                    wire.pack({"heartbeat": {"version": 1}})):
        status, body = await rig.call("POST", "/v1/reports", rig.hosts["h1"].token, garbage)
        assert status == 400, garbage
        assert body["error"]
