"""Read one key prefix through etcd's JSON gateway (``/v3/kv/range``), synchronously.

Why: the lab's campaign polls the cluster view several times a second while it
waits for convergence. `tandem status --json` in a new process costs about 0.7 s
of CPU (imports), which on a 2-core machine running two labs slowed every poll to
seconds and stretched every measured convergence. This read needs no gRPC
channel, so a long-running process that also forks children can use it safely.
Read-only on purpose: writers go through :class:`tandem.dcs.etcd.EtcdDCS`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import requests

from tandem.dcs.base import DCSError
from tandem.dcs.keys import RawKV
from tandem.dcs.pki import HostTls


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def parse_range(reply: dict) -> tuple[int, list[RawKV]]:
    """(revision, keys) from a gateway range reply; int64 fields arrive as strings."""
    try:
        revision = int(reply["header"]["revision"])
        kvs = [RawKV(base64.b64decode(kv["key"]).decode(errors="replace"),
                     base64.b64decode(kv.get("value", "")),
                     int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                     int(kv.get("lease", 0)))
               for kv in reply.get("kvs", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise DCSError(f"etcd gateway: malformed range reply ({type(e).__name__}: {e})") from None
    return revision, kvs


def read_prefix(endpoints: Sequence[str], prefix: str, timeout: float = 2.0,
                session: requests.Session | None = None,
                tls: HostTls | None = None) -> tuple[int, list[RawKV]]:
    """Every key under `prefix`, from the first endpoint (host:port) that answers;
    over mutual TLS with `tls` (the etcd of a tandem cluster takes nothing else)."""
    body = {"key": _b64(prefix.encode()), "range_end": _b64(prefix_end(prefix.encode()))}
    http = session or requests
    scheme, extra = "http", {}
    if tls is not None:
        scheme, extra = "https", {"verify": str(tls.ca), "cert": (str(tls.cert), str(tls.key))}
    errors = []
    for ep in endpoints:
        try:
            resp = http.post(f"{scheme}://{ep}/v3/kv/range", json=body, timeout=timeout, **extra)
            if resp.status_code != 200:
                errors.append(f"{ep}: HTTP {resp.status_code} {resp.text[:120]}")
                continue
            return parse_range(resp.json())
        except (requests.RequestException, ValueError) as e:
            errors.append(f"{ep}: {type(e).__name__}")
    raise DCSError(f"etcd gateway: no endpoint answered ({'; '.join(errors)})")
