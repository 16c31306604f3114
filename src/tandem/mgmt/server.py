"""The management server: CloudStack's `/client/api` over aiohttp.

A request goes through a fixed pipeline, and each stage can only refuse it
before anything is stored: size limits -> parameters (query string and POST
form) -> command lookup (432) -> authentication (401: API key + signature, or a
database session) -> parameter validation (431) -> the command. Errors become
CloudStack error envelopes whose `errorcode` equals the HTTP status.

The server keeps no state of its own: sessions, jobs and objects are in MariaDB,
so any number of instances can serve the same cloud behind a load balancer, and
`/health` (200 only while the database answers) tells haproxy which ones can.
Request parameters are never logged: they carry passwords, signatures and
session keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tandem.errors import TandemError
from tandem.mgmt import auth, cmd_auth, cmd_catalog, cmd_vm, signing  # noqa: F401 - registers commands
from tandem.mgmt.commands import REGISTRY, Call
from tandem.mgmt.db import Database, DbOutcomeUnknown, DbUnavailable, DbUrl, is_charset_error
from tandem.mgmt.envelopes import (
    INTERNAL_ERROR,
    NOT_XML_CHAR,
    PARAM_ERROR,
    UNAUTHORIZED,
    UNSUPPORTED_ACTION,
    ApiError,
    ListResult,
    envelope_name,
    render,
)
from tandem.mgmt.health import SharedProbe
from tandem.mgmt.hostclient import HostClient
from tandem.mgmt.jobs import JobManager
from tandem.mgmt.migrations import migrate
from tandem.mgmt.secretbox import SecretBox, seal_clear_rows
from tandem.mgmt.vmjobs import HANDLERS

log = logging.getLogger("tandem.mgmt.server")

API_PATH = "/client/api"
MAX_PARAMS = 200
PARAM_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,100}")  #: what a parameter name may be


@dataclass(frozen=True)
class MgmtConfig:
    db: DbUrl
    host: str = "127.0.0.1"
    port: int = 8080
    server_id: str = "mgmt1"
    simhost: str = "http://127.0.0.1:8250"
    dead_after: float = 3.0
    db_retry_budget: float = 8.0
    host_retry_budget: float = 20.0
    max_request_bytes: int = 64 * 1024
    #: refuse API-key requests without signatureVersion 3 and `expires` (version 2
    #: requests never expire: one seen on the wire can be sent again for ever)
    require_expires: bool = False
    max_expires_ahead: float = 3600.0  #: the latest `expires` accepted, in seconds from now
    migrate: bool = True
    key_file: Path | None = None  #: seals API secret keys at rest (in a cluster: the cluster secret)


class MgmtServer:
    """One management server instance: the HTTP API plus its job manager."""

    def __init__(self, config: MgmtConfig):
        self.config = config
        self.db = Database(config.db, retry_budget=config.db_retry_budget)
        if config.key_file is None:
            raise TandemError("a key file is required: it seals the API secret keys in the database")
        self.box = SecretBox.from_file(config.key_file)
        self.host = HostClient(config.simhost, retry_budget=config.host_retry_budget)
        self.jobs = JobManager(self.db, config.server_id, f"{config.host}:{config.port}", self.host, HANDLERS,
                               dead_after=config.dead_after)
        self._runner: web.AppRunner | None = None
        self.health_probe = SharedProbe(self.db.ping)
        #: password checks (scrypt: 16 MiB and tens of ms each) running at once
        self.password_checks = asyncio.Semaphore(2)

    # -- lifecycle -----------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_bytes)
        app.router.add_get(API_PATH, self.handle)  # and HEAD, answered like GET as CloudStack does
        app.router.add_route("POST", API_PATH, self.handle)
        app.router.add_get("/health", self.health)
        app.router.add_get("/client/api/health", self.health)
        return app

    async def start(self) -> None:
        if self.config.migrate:
            try:
                await asyncio.get_running_loop().run_in_executor(None, migrate, self.db)
                await self.db.write(lambda cur: seal_clear_rows(cur, self.box), idempotent=True)
            except pymysql.err.MySQLError as e:
                why = e.args[-1] if e.args else e
                raise TandemError(f"database {self.config.db.safe()}: {why}") from None
        await self.jobs.start()
        quiet_bad_requests()
        # Long request lines reach our handler, which answers them with a CloudStack error.
        limit = self.config.max_request_bytes
        self._runner = web.AppRunner(self.make_app(), access_log=None,
                                     max_line_size=2 * limit + 8192, max_field_size=16384)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.port).start()
        log.info("management server %s listening on %s:%d (db %s)", self.config.server_id, self.config.host,
                 self.config.port, self.config.db.safe())

    async def stop(self) -> None:
        await self.jobs.stop()
        if self._runner:
            await self._runner.cleanup()
        await self.host.close()
        self.db.close()

    # -- HTTP ---------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        ok = await self.health_probe.check()
        return web.json_response({"status": "ok" if ok else "database unreachable",
                                  "server": self.config.server_id}, status=200 if ok else 503)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        fmt, name, command, user = "xml", "errorresponse", "?", None
        try:
            fmt = "json" if request.query.get("response", "").lower() == "json" else "xml"
            raw = await self._params(request)
            fmt = "json" if raw.get("response", "").lower() == "json" else "xml"
            command = raw.get("command", "")
            if not command:
                raise ApiError(UNSUPPORTED_ACTION, "no command given (add command=NAME)")
            cmd = REGISTRY.get(command.lower())
            if cmd is None:
                raise ApiError(UNSUPPORTED_ACTION, f"The given command: {command[:64]} does not exist or"
                                                   " it is not available for user")
            name = cmd.response_name or envelope_name(cmd.name)
            caller, sessionkey = None, None
            if cmd.needs_auth:
                caller, sessionkey = await self._authenticate(request, raw)
                user = caller.username
                if cmd.admin_only and not caller.is_admin:
                    raise ApiError(UNSUPPORTED_ACTION, f"The given command: {cmd.name} does not exist or it"
                                                       " is not available for user")
            lowered = {k.lower(): v for k, v in raw.items()}
            call = Call(cmd.name, caller, cmd.parse(lowered), self, sessionkey)
            response = await cmd.handler(call)
            body = response.body.body() if isinstance(response.body, ListResult) else response.body
            text, ctype = render(response.name or name, body, fmt)
            resp = web.Response(text=text, status=200, headers={"Content-Type": ctype})
            for key, value in response.cookies.items():
                if value:
                    resp.set_cookie(key, value, path="/client", httponly=key in ("JSESSIONID", "sessionkey"),
                                    samesite="Strict")
                else:
                    resp.del_cookie(key, path="/client")
            status = 200
        except ApiError as e:
            resp, status = self._error(name, e, fmt), e.code
        except DbOutcomeUnknown as e:
            log.warning("command %s: %s", command[:64], e)
            resp = self._error(name, ApiError(INTERNAL_ERROR, "the database became unreachable while this"
                                              " request was being committed: it may have been carried out;"
                                              " look (listAsyncJobs, or list what it changes) before sending"
                                              " it again"), fmt)
            status = INTERNAL_ERROR
        except DbUnavailable as e:
            log.warning("command %s: %s", command[:64], e)  # where the database is stays in the log
            resp = self._error(name, ApiError(INTERNAL_ERROR, "the database is unreachable; try again"), fmt)
            status = INTERNAL_ERROR
        except Exception as e:
            if is_charset_error(e):
                # Only a schema older than migration 8 (latin1 tables, a server started
                # with --no-migrate) refuses text the API lets in: the value's fault.
                log.warning("command %s: the database refused a parameter's characters (error %s)",
                            command[:64], e.args[0])  # its message would quote the value
                resp = self._error(name, ApiError(PARAM_ERROR, "a parameter holds characters the database"
                                                  " cannot store"), fmt)
                status = PARAM_ERROR
            else:
                log.exception("command %s failed", command[:64])
                resp = self._error(name, ApiError(INTERNAL_ERROR, "internal error; see the server log"), fmt)
                status = INTERNAL_ERROR
        ms = round((time.monotonic() - started) * 1000, 1)
        log.info("api %s %s user=%s status=%d %.1fms", request.method, command[:64], user, status, ms,
                 extra={"fields": {"method": request.method, "command": command[:64], "user": user,
                                   "status": status, "ms": ms, "server": self.config.server_id}})
        return resp

    @staticmethod
    def _error(name: str, error: ApiError, fmt: str) -> web.Response:
        text, ctype = render(name, error.body(), fmt)
        return web.Response(text=text, status=error.code, headers={"Content-Type": ctype})

    async def _params(self, request: web.Request) -> dict[str, str]:
        """Query string and form parameters; the first value of a name wins."""
        limit = self.config.max_request_bytes
        if len(request.query_string) > limit or (request.content_length or 0) > limit:
            raise ApiError(PARAM_ERROR, f"request too large: the limit is {limit} bytes of parameters")
        merged: list[tuple[str, str]] = list(request.query.items())
        if request.method == "POST":
            try:
                form = await request.post()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(PARAM_ERROR, f"request too large: the limit is {limit} bytes of parameters"
                               ) from None
            except (ValueError, LookupError, HttpProcessingError, RuntimeError):
                # Bytes that are not in the declared charset (UnicodeDecodeError), a charset
                # Python does not know (LookupError), multipart without a boundary or cut
                # short (ValueError), a part's broken header (InvalidHeader), a part's
                # unknown transfer encoding or a too long _charset_ (aiohttp's
                # RuntimeError): the client's mistake, not ours.
                raise ApiError(PARAM_ERROR, "request body is not valid form data (send"
                                            " application/x-www-form-urlencoded in UTF-8)") from None
            for key, value in form.items():
                if isinstance(value, str):
                    merged.append((key, value))
        out: dict[str, str] = {}
        for key, value in merged:
            _check_text(key, value)
            if not PARAM_NAME.fullmatch(key):
                # The signed string joins names and values with "=" and "&" unescaped in
                # names: a name holding them can swallow its neighbours (a captured
                # request re-cut to drop signatureVersion, and with it the expiry).
                shown = key[:40].encode("unicode_escape").decode()
                raise ApiError(PARAM_ERROR, f"bad parameter name {shown!r}: use only letters, digits"
                                            " and _ . [ ] -")
            out.setdefault(key, value)
        if len(out) > MAX_PARAMS:
            raise ApiError(PARAM_ERROR, f"too many parameters: the limit is {MAX_PARAMS}")
        return out

    async def _authenticate(self, request: web.Request,
                            raw: dict[str, str]) -> tuple[auth.Caller, str | None]:
        """The caller, from an API key and signature or else from a session key."""
        lowered = {k.lower(): v for k, v in raw.items()}
        denied = ApiError(UNAUTHORIZED, "unable to verify user credentials and/or request signature")
        apikey = lowered.get("apikey")
        if apikey is not None:
            signature = lowered.get("signature")
            if not signature:
                raise ApiError(UNAUTHORIZED, "unable to verify user credentials: the request has an apiKey"
                                             " but no signature")
            if lowered.get("signatureversion") == "3" or "expires" in lowered \
                    or self.config.require_expires:
                try:
                    signing.check_expires(lowered.get("expires"), max_ahead_s=self.config.max_expires_ahead)
                except signing.ExpiresError as e:
                    raise ApiError(UNAUTHORIZED, f"unable to verify request signature: {e}") from None
            if not apikey.isascii():  # ours are URL-safe base64: this one names nobody
                raise denied
            found = await self.db.read(lambda cur: auth.by_apikey(cur, apikey, self.box))
            if found is None or not signing.signature_matches(raw, found[1], signature):
                raise denied
            return found[0], None
        # The session key must come as a parameter, as in CloudStack: a cookie is sent
        # by the browser with any request, also one another site makes it send (CSRF).
        sessionkey = lowered.get("sessionkey")
        if sessionkey:
            caller = await self.db.read(lambda cur: auth.by_session(cur, sessionkey))
            if caller is not None:
                return caller, sessionkey
        raise denied


def _check_text(key: str, value: str) -> None:
    """Refuse a parameter whose name or value is not text the API can take: bytes that
    were not UTF-8 (aiohttp hands them over as lone surrogates, which nothing can
    encode again: signing, the database and the answer all failed with a 530) or a
    character XML 1.0 cannot carry (a control character: the XML answer echoing it
    was not well-formed). The value is never shown: it may be a password."""
    named = f"parameter {key}" if PARAM_NAME.fullmatch(key) else "a parameter"
    for text, what in ((key, "a parameter name"), (value, f"the value of {named}")):
        bad = NOT_XML_CHAR.search(text)
        if bad is None:
            continue
        if "\ud800" <= bad.group() <= "\udfff":
            raise ApiError(PARAM_ERROR, f"{what} is not valid UTF-8 (percent-encode UTF-8 text)")
        kind = "a control character" if bad.group() < " " else "a noncharacter"
        raise ApiError(PARAM_ERROR, f"{what} holds {kind} (U+{ord(bad.group()):04X}), which the API does"
                                    " not take")


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (a raw non-ASCII byte in the
    query string, a broken request line) as an error with a traceback that quotes the
    request line: the API key, the signature, a password sent as a query parameter.
    Such a request is the client's mistake, answered 400 by aiohttp: one line without
    the request instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        log.warning("refused a malformed HTTP request (%s, HTTP %s; the request is not logged: it may"
                    " carry secrets)", type(exc).__name__, exc.code)
        return False


def quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(_QuietBadRequests())


async def serve(config: MgmtConfig) -> None:
    """Run one management server until cancelled."""
    server = MgmtServer(config)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
