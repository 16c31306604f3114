"""The command registry: each API command declares its parameters once.

The declaration drives three things, so they cannot drift apart: validation of
a request (missing or malformed parameters give CloudStack's 431 before any
work is done, so a refused request changes nothing), `listApis` (names, types,
`isasync`) and paging. Parameter names are matched case-insensitively, as
clients spell them variously (`serviceOfferingId`, `serviceofferingid`);
unknown parameters are ignored, as CloudStack does.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.mgmt.auth import Caller
from tandem.mgmt.envelopes import ListResult, Response, param_error

if TYPE_CHECKING:
    from tandem.mgmt.server import MgmtServer

MAX_STRING = 4096
DEFAULT_PAGE_SIZE = 500
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "string"  # string, uuid, integer, boolean, list
    required: bool = False
    description: str = ""
    max_length: int = 255
    #: never shown in an error (a password: a 431 used to echo its first 60 characters)
    secret: bool = False

    def parse(self, command: str, raw: str) -> Any:
        def bad(why: str) -> Exception:
            if self.secret:
                return param_error(f"Unable to execute API command {command.lower()} due to invalid value."
                                   f" Invalid parameter {self.name}: {why}")
            shown = raw if len(raw) <= 60 else raw[:60] + "..."
            return param_error(f"Unable to execute API command {command.lower()} due to invalid value."
                               f" Invalid parameter {self.name} value={shown}: {why}")
        if self.type == "uuid":
            try:
                return str(uuid.UUID(raw))
            except ValueError:
                raise bad("not a UUID") from None
        if self.type == "integer":
            try:
                value = int(raw)
            except ValueError:
                raise bad("not an integer") from None
            if not INT_MIN <= value <= INT_MAX:  # CloudStack's are Java ints; MariaDB's LIMIT chokes
                raise bad(f"out of range ({INT_MIN} to {INT_MAX})")
            return value
        if self.type == "boolean":
            if raw.lower() not in ("true", "false"):
                raise bad("not true or false")
            return raw.lower() == "true"
        if self.type == "list":
            return [part for part in raw.split(",") if part]
        if len(raw) > self.max_length:
            raise bad(f"longer than {self.max_length} characters")
        return raw


PAGING = (Param("page", "integer", description="page number, from 1"),
          Param("pagesize", "integer", description="items per page (-1: all)"),
          Param("keyword", description="free text matched against names"))


@dataclass
class Call:
    """One validated API call: who, what, with which parameters, on which server."""

    command: str
    caller: Caller | None
    params: dict[str, Any]
    server: MgmtServer
    sessionkey: str | None = None

    def paging(self) -> tuple[int, int | None]:
        """(offset, limit) from page/pagesize; limit None means everything."""
        page, size = self.params.get("page"), self.params.get("pagesize")
        if size is not None and size != -1 and size < 1:
            raise param_error("pagesize must be a positive number (or -1 for all)")
        if page is not None and page < 1:
            raise param_error("page must be a positive number")
        if size == -1:
            return 0, None
        size = size or DEFAULT_PAGE_SIZE
        return ((page or 1) - 1) * size, size


Handler = Callable[[Call], Awaitable[Response]]


@dataclass
class Command:
    name: str
    handler: Handler
    params: tuple[Param, ...]
    description: str
    isasync: bool = False
    response_name: str | None = None
    needs_auth: bool = True
    admin_only: bool = False
    by_name: dict[str, Param] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {p.name.lower(): p for p in self.params}

    def parse(self, raw: dict[str, str]) -> dict[str, Any]:
        """Validate `raw` (names already lower-cased) against the declaration."""
        out: dict[str, Any] = {}
        for p in self.params:
            value = raw.get(p.name.lower())
            if value is None or (value == "" and p.type != "string"):
                if p.required:
                    raise param_error(f"Unable to execute API command {self.name.lower()} due to missing"
                                      f" parameter {p.name}")
                continue
            out[p.name] = p.parse(self.name, value)
        return out


REGISTRY: dict[str, Command] = {}


def command(name: str, *params: Param, description: str = "", isasync: bool = False,
            response_name: str | None = None, needs_auth: bool = True, admin_only: bool = False):
    """Register an API command handler under its CloudStack name."""
    def deco(fn: Handler) -> Handler:
        REGISTRY[name.lower()] = Command(name, fn, tuple(params), description or (fn.__doc__ or "").strip(),
                                         isasync, response_name, needs_auth, admin_only)
        return fn
    return deco


def empty_list(name: str, item: str, *params: Param, description: str = "") -> None:
    """A list command we answer with no items (features the simulator lacks)."""
    async def handler(call: Call) -> Response:
        return Response(ListResult(item, []))
    handler.__doc__ = description or f"Lists {item} objects (none in this simulated cloud)."
    command(name, *params, *PAGING, Param("listall", "boolean"), Param("id", "uuid"),
            Param("zoneid", "uuid"), Param("projectid", "uuid"), Param("virtualmachineid", "uuid"))(handler)
