"""API secret keys are sealed in the database: a copy of the database holds no
usable secret, a sealed value does not open on another user's row or with
another key file, and secrets stored in clear by an older server are sealed
when a server starts, without breaking the clients that use them."""

from __future__ import annotations

import secrets

import pytest

from tandem.mgmt.secretbox import SecretBox, SecretBoxError, is_sealed
from tests.mgmt.conftest import Api, MgmtProc, SimHostProc, create_admin


def test_seal_opens_only_with_its_key_and_user():
    box = SecretBox(secrets.token_bytes(32))
    sealed = box.seal("the-secret", "user-a")
    assert is_sealed(sealed) and "the-secret" not in sealed
    assert box.seal("the-secret", "user-a") != sealed  # a fresh nonce each time
    assert box.open(sealed, "user-a") == "the-secret"
    with pytest.raises(SecretBoxError):
        box.open(sealed, "user-b")
    with pytest.raises(SecretBoxError):
        SecretBox(secrets.token_bytes(32)).open(sealed, "user-a")
    mid = len(sealed) // 2  # a character that carries ciphertext bits (the last ones may be padding)
    tampered = sealed[:mid] + ("A" if sealed[mid] != "A" else "B") + sealed[mid + 1:]
    with pytest.raises(SecretBoxError):
        box.open(tampered, "user-a")
    assert box.open("clear-from-before", "user-a") == "clear-from-before"
    assert "key" in repr(box) and "the-secret" not in repr(box)


def _stored(mariadb, database: str, user_id: str) -> str:
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT secretkey FROM `{database}`.user WHERE id=%s", (user_id,))
        return cur.fetchone()[0]


def test_secrets_are_sealed_in_the_database_and_clear_rows_get_sealed(procs, mariadb, database,
                                                                      mgmt_key_file):
    host = SimHostProc(procs, op_seconds=0.05)
    server = MgmtProc(procs, mariadb, database, host, "mgmt-s")
    admin = create_admin(procs, mariadb, database)
    stored = _stored(mariadb, database, admin["userid"])
    assert is_sealed(stored) and admin["secretkey"] not in stored
    api = Api(server.endpoint, admin["apikey"], admin["secretkey"])
    assert api("listZones")["count"] == 1
    keys = api("getUserKeys", id=admin["userid"])["userkeys"]
    assert keys == {"apikey": admin["apikey"], "secretkey": admin["secretkey"]}
    new = api("registerUserKeys", id=admin["userid"])["userkeys"]
    assert new["secretkey"] not in _stored(mariadb, database, admin["userid"])

    # A row as a server before encryption left it: the secret in clear.
    other = create_admin(procs, mariadb, database, "legacy")
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE `{database}`.user SET secretkey=%s WHERE id=%s",
                    (other["secretkey"], other["userid"]))
    legacy = Api(server.endpoint, other["apikey"], other["secretkey"])
    assert legacy("listZones")["count"] == 1  # still accepted until sealed
    server.kill()
    restarted = MgmtProc(procs, mariadb, database, host, "mgmt-s2")
    stored = _stored(mariadb, database, other["userid"])
    assert is_sealed(stored) and other["secretkey"] not in stored
    assert Api(restarted.endpoint, other["apikey"], other["secretkey"])("listZones")["count"] == 1
    assert str(mgmt_key_file) not in procs.log("mgmt-s2")
    assert mgmt_key_file.read_text().strip() not in procs.log("mgmt-s2")
