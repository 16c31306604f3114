"""CloudStack's request signature, pure functions, no I/O.

CloudStack signs a request thus: take every parameter except `signature`, sort
them by name, join `name=urlencode(value)` with `&`, lower-case the whole string,
HMAC-SHA1 it with the user's secret key and base64 the digest. The server's
encoder is Java's `URLEncoder` with `+` replaced by `%20`.

Clients differ in small ways that the real server happens to tolerate for
common inputs: `cs` sorts the original names (case-sensitive, like Java) and
leaves `*` unescaped; libcloud lower-cases names before sorting and leaves `[`,
`]` and `*` unescaped. We accept a signature that matches any of these
canonical forms, each compared in constant time, so every client that works with
CloudStack works here, and nothing weaker than the HMAC is ever accepted.

`signatureVersion=3` adds an `expires` parameter (ISO 8601 with a zone) that is
part of the signed string; a request past its `expires` is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote


def java_urlencode(value: str) -> str:
    """java.net.URLEncoder.encode(value, "UTF-8").replace("+", "%20")."""
    return quote(value, safe="*-._").replace("~", "%7E")


def _libcloud_encode(value: str) -> str:
    return quote(value, safe="[]*")


def _cs_encode(value: str) -> str:
    return quote(value, safe="*")


def canonical_strings(params: Mapping[str, str]) -> list[str]:
    """The lower-cased strings a client may have signed for these parameters."""
    items = [(k, v) for k, v in params.items() if k.lower() != "signature"]
    forms: list[str] = []
    for sort_key, encode in ((lambda kv: kv[0], java_urlencode),
                             (lambda kv: kv[0], _cs_encode),
                             (lambda kv: kv[0].lower(), _libcloud_encode)):
        text = "&".join(f"{k}={encode(v)}" for k, v in sorted(items, key=sort_key)).lower()
        if text not in forms:
            forms.append(text)
    return forms


def sign(params: Mapping[str, str], secret: str) -> str:
    """The signature CloudStack expects for `params` (used by tests and tools)."""
    text = canonical_strings(params)[0]
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_matches(params: Mapping[str, str], secret: str, signature: str) -> bool:
    """True when `signature` is a valid HMAC of one canonical form of `params`."""
    try:
        given = base64.b64decode(signature.replace(" ", "+"), validate=True)
    except ValueError:
        return False
    ok = False
    for text in canonical_strings(params):
        digest = hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
        ok |= hmac.compare_digest(digest, given)
    return ok


class ExpiresError(ValueError):
    """`expires` is missing, unreadable or in the past."""


def check_expires(value: str | None, now: datetime | None = None, max_ahead_s: float = 3600) -> datetime:
    """Parse a signatureVersion 3 `expires` and refuse it when it has passed, or when
    it lies more than `max_ahead_s` ahead: a request signed to expire in the year 9999
    could be replayed for ever by whoever saw it go by."""
    if not value:
        raise ExpiresError("signatureVersion 3 needs an 'expires' parameter")
    try:
        when = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise ExpiresError(f"'expires' is not an ISO 8601 time: {value[:40]!r}") from None
    if when.tzinfo is None:
        raise ExpiresError("'expires' must carry a time zone (like 2024-01-01T12:00:00+0000)")
    now = now or datetime.now(UTC)
    if when < now:
        raise ExpiresError(f"request expired at {when.isoformat()}")
    ahead = (when - now).total_seconds()
    if ahead > max_ahead_s:
        raise ExpiresError(f"'expires' is {ahead:.0f} s ahead; this server accepts at most"
                           f" {max_ahead_s:.0f} s (sign the request with a nearer time)")
    return when
