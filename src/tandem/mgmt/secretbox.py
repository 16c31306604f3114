"""API secret keys encrypted at rest.

The server must read a user's secret key back (the request signature is an
HMAC with it), so it cannot be hashed like a password. It is stored sealed
with AES-256-GCM instead: a copy of the database (a dump, a backup, the
replica's disk) then holds no usable secret without the key file, which lives
on the nodes' own disks, never in the database.

- The AES key is derived (HKDF-SHA256, a fixed purpose string) from a key
  file: in a cluster the cluster secret file, so every management server of
  the cluster has the same key with nothing new to distribute.
- The user id is the associated data: a sealed secret copied onto another
  user's row does not open.
- Stored form ``v1:<base64url(nonce | ciphertext+tag)>``; a value without the
  prefix is a secret from before encryption, accepted as such until
  :func:`seal_clear_rows` (run at every server start, after the schema
  migrations) has sealed it.

Neither the key nor a secret is ever logged or part of a repr.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tandem.errors import TandemError
from tandem.secretfile import read_private

log = logging.getLogger("tandem.mgmt.secretbox")

PREFIX = "v1:"
PURPOSE = b"tandem mgmt: API secret keys at rest, v1"
MIN_KEY_BYTES = 16


class SecretBoxError(TandemError):
    """A sealed secret does not open: another key file sealed it, or it was altered."""


class SecretBox:
    def __init__(self, material: bytes):
        if len(material) < MIN_KEY_BYTES:
            raise TandemError(f"the key file must hold at least {MIN_KEY_BYTES} bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(material)
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        return cls(read_private(path, "key file"))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, secret: str, user_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), user_id.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, user_id: str) -> str:
        """The secret of `stored` (a clear value from before encryption as it is)."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX):])
            return self._aead.decrypt(raw[:12], raw[12:], user_id.encode()).decode()
        except (InvalidTag, ValueError) as e:
            raise SecretBoxError(f"the API secret of user {user_id} does not open with this key file"
                                 " (sealed with another one, or altered)") from e


def is_sealed(stored: str | None) -> bool:
    return bool(stored) and stored.startswith(PREFIX)


def seal_clear_rows(cur, box: SecretBox) -> int:
    """Seal every secret still stored in clear; returns how many. Safe when several
    servers run it at once: each row is replaced only if it still holds the clear value."""
    cur.execute("SELECT id, secretkey FROM user WHERE secretkey IS NOT NULL AND secretkey NOT LIKE %s",
                (PREFIX + "%",))
    done = 0
    for row in cur.fetchall():
        cur.execute("UPDATE user SET secretkey=%s WHERE id=%s AND secretkey=%s",
                    (box.seal(row["secretkey"], row["id"]), row["id"], row["secretkey"]))
        done += cur.rowcount
    if done:
        log.info("sealed %d API secret key(s) stored in clear", done)
    return done
