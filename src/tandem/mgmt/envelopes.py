"""CloudStack's response envelopes and error codes, in JSON and XML.

Every answer is one object named `<command in lower case>response`. A list
answer holds `count` and a list named for the object (`listzonesresponse:
{count: 1, zone: [...]}`), and an empty list is `{}` — clients such as libcloud
test for the key, not for an empty list. An error carries `errorcode` equal to
the HTTP status, `cserrorcode` (CloudStack's exception class number) and
`errortext`. XML is the same tree: a list becomes repeated elements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

CLOUDSTACK_VERSION = "4.18.0.0"

#: What XML 1.0 cannot carry (outside its `Char` production): the C0 controls but
#: tab, LF and CR; lone surrogates (what is left of bytes that were not UTF-8); and
#: U+FFFE, U+FFFF. Request parameters holding them are refused (`server._params`);
#: text that reaches `to_xml` anyway is mended, never sent malformed.
NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# CloudStack's ApiErrorCode values.
UNAUTHORIZED = 401
PARAM_ERROR = 431
UNSUPPORTED_ACTION = 432
INTERNAL_ERROR = 530
ACCOUNT_ERROR = 531
RESOURCE_UNAVAILABLE = 534
RESOURCE_IN_USE = 536

# CloudStack's CSExceptionErrorCode numbers for the exception kinds we raise.
CS_GENERIC = 9999
CS_INVALID_PARAMETER = 4350
CS_PERMISSION_DENIED = 4365
CS_RESOURCE_UNAVAILABLE = 4520
CS_RESOURCE_IN_USE = 4525
CS_INTERNAL = 4250

_CS_CODE = {PARAM_ERROR: CS_INVALID_PARAMETER, ACCOUNT_ERROR: CS_PERMISSION_DENIED,
            RESOURCE_UNAVAILABLE: CS_RESOURCE_UNAVAILABLE, RESOURCE_IN_USE: CS_RESOURCE_IN_USE,
            INTERNAL_ERROR: CS_INTERNAL}


class ApiError(Exception):
    """A failure reported to the API client as a CloudStack error response."""

    def __init__(self, code: int, text: str, cscode: int | None = None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.cscode = cscode if cscode is not None else _CS_CODE.get(code, CS_GENERIC)

    def body(self) -> dict[str, Any]:
        return {"uuidList": [], "errorcode": self.code, "cserrorcode": self.cscode, "errortext": self.text}


def param_error(text: str) -> ApiError:
    return ApiError(PARAM_ERROR, text)


@dataclass
class ListResult:
    """A list answer: the object name, this page of items and the total count."""

    name: str
    items: list[dict[str, Any]]
    count: int | None = None

    def body(self) -> dict[str, Any]:
        if not self.items and not self.count:
            return {}
        return {"count": self.count if self.count is not None else len(self.items), self.name: self.items}


@dataclass
class Response:
    """What a command answers: a body under `<command>response`, plus cookies."""

    body: dict[str, Any] | ListResult
    name: str | None = None  # override the envelope name (CloudStack has a few oddities)
    cookies: dict[str, str] = field(default_factory=dict)


def envelope_name(command: str) -> str:
    return command.lower() + "response"


def render(name: str, body: dict[str, Any], fmt: str) -> tuple[str, str]:
    """Serialize `{name: body}`; return (text, content type)."""
    if fmt == "xml":
        return to_xml(name, body), "text/xml; charset=UTF-8"
    return json.dumps({name: body}, separators=(",", ":"), default=str), "application/json; charset=UTF-8"


def to_xml(name: str, body: dict[str, Any]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<{name} cloud-stack-version="{CLOUDSTACK_VERSION}">']
    _xml_fields(body, parts)
    parts.append(f"</{name}>")
    return "".join(parts)


def _xml_fields(obj: dict[str, Any], out: list[str]) -> None:
    for key, value in obj.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                out.append(f"<{key}>")
                _xml_fields(item, out)
                out.append(f"</{key}>")
            elif item is None:
                continue
            else:
                text = str(item).lower() if isinstance(item, bool) else str(item)
                out.append(f"<{key}>{xml_text(text)}</{key}>")


def xml_text(text: str) -> str:
    """`text` as XML character data: escaped, a character XML cannot carry replaced by
    U+FFFD, and CR kept as a reference (a parser turns a literal one into LF)."""
    return escape(NOT_XML_CHAR.sub("\ufffd", text), {"\r": "&#13;"})
