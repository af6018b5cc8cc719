"""The live fleet page, `/ui`, served by the tracker's own aiohttp app (read-only).

  GET  /ui             the page with a session, else the login form only
  POST /ui/login       form field `token` (admin or builder) -> session cookie, 303 to /ui
  POST /ui/logout      drops the cookie
  GET  /ui/state       JSON the page polls: rollouts with per-host rows, hosts (admin only)
  GET  /ui/static/...  the page's script and style, package data (no build step, nothing fetched)

The token travels only in the login POST body, never in a URL. The session cookie is HttpOnly,
SameSite=Strict, Secure over HTTPS, Path=/ui, and holds the token's name and an expiry signed with
a key derived from the CA key (so every worker and replica accepts it); each request checks again
that the token exists, is not revoked and may read. Login and logout refuse a POST whose Origin
is not the page's own (login CSRF); everything else is a GET that changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import time
from importlib import resources
from typing import Any

from aiohttp import web

from swarm.core import wire
from swarm.core.errors import Forbidden, SwarmError, Unauthorized
from swarm.core.tokens import JoinToken
from swarm.tracker.fleet import Fleet
from swarm.tracker.service import TrackerService
from swarm.tracker.storage.base import TokenRecord

COOKIE = "swarm_session"
SESSION_LIFETIME = 8 * 3600
#: roles that may log in
READERS = ("admin", "builder")
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form posts send `Origin: null`
    "Cache-Control": "no-store",
}


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text()


class FleetPage:
    def __init__(self, service: TrackerService, fleet: Fleet, clock: Any = time.time) -> None:
        self._service = service
        self._fleet = fleet
        self._key = service.ca.derive_secret("ui-session")
        self._clock = clock

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.page)
        app.router.add_post("/ui/login", self.login)
        app.router.add_post("/ui/logout", self.logout)
        app.router.add_get("/ui/state", self.state)
        app.router.add_get("/ui/static/{name}", self.asset)

    # sessions

    def _cookie_value(self, name: str) -> str:
        payload = base64.urlsafe_b64encode(wire.pack({"n": name, "e": int(self._clock()) + SESSION_LIFETIME}))
        mac = hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return f"{payload.decode()}.{mac}"

    def _session(self, request: web.Request) -> TokenRecord | None:
        value = request.cookies.get(COOKIE, "")
        payload, _, mac = value.partition(".")
        expected = hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()
        if not payload or not hmac.compare_digest(mac, expected):
            return None
        try:
            m = wire.unpack_map(base64.urlsafe_b64decode(payload), 256)
            name, expires = str(m["n"]), int(m["e"])
        except (SwarmError, KeyError, ValueError, TypeError):
            return None
        if expires < self._clock():
            return None
        record = self._service.storage.token(name)
        if record is None or record.revoked or record.role not in READERS:
            return None
        return record

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is not None and origin == f"{request.scheme}://{request.host}"

    # handlers

    def _html(self, body: str, status: int = 200) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/html", headers=_HEADERS)

    def _login_form(self, message: str = "", status: int = 200) -> web.Response:
        return self._html(_static("login.html").replace("{{message}}", html.escape(message)), status)

    async def page(self, request: web.Request) -> web.Response:
        if self._session(request) is None:
            return self._login_form()
        return self._html(_static("page.html"))

    async def login(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._login_form("refused: log in from this page", 403)
        form = await request.post()
        text = str(form.get("token", "")).strip()
        try:
            secret = JoinToken.parse(text).secret
        except SwarmError:
            secret = text
        try:
            record = self._service.authenticate(secret, request.remote or None)
        except SwarmError as exc:
            return self._login_form(exc.message, 401)
        if record.role not in READERS:
            return self._login_form(
                f"token {record.name!r} has role {record.role}: only admin and builder tokens see the fleet", 403
            )
        response = web.HTTPSeeOther("/ui", headers=_HEADERS)
        response.set_cookie(
            COOKIE,
            self._cookie_value(record.name),
            max_age=SESSION_LIFETIME,
            path="/ui",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._login_form("refused: log out from this page", 403)
        response = web.HTTPSeeOther("/ui", headers=_HEADERS)
        response.del_cookie(COOKIE, path="/ui")
        raise response

    async def state(self, request: web.Request) -> web.Response:
        record = self._session(request)
        if record is None:
            raise Unauthorized("no session: log in at /ui")
        try:
            hosts = [h.to_map() for h in self._fleet.hosts(record)]
        except Forbidden:
            hosts = []
        rollouts = [v.to_map() for v in self._fleet.rollouts(record)]
        return web.json_response(
            {
                "me": {"name": record.name, "role": record.role},
                "now": self._clock(),
                "rollouts": rollouts,
                "hosts": hosts,
            },
            headers=_HEADERS,
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            text=_static(name), content_type=_STATIC[name], headers={**_HEADERS, "Cache-Control": "max-age=300"}
        )
