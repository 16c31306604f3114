"""A login's password check costs the same whether the name exists or not: an
unknown or disabled name used to skip scrypt, and the speed of the answer told
which names exist."""

from __future__ import annotations

import hashlib

import pytest

from tandem.mgmt import auth


def _row(user_state: str = "enabled") -> dict:
    return {"user_id": "u", "username": "alice", "firstname": "", "lastname": "", "account_id": "a",
            "account": "alice", "account_type": 0, "domain_id": "d", "domain": "ROOT",
            "user_state": user_state, "account_state": "enabled",
            "password_hash": auth.hash_password("right-password")}


@pytest.mark.parametrize("row", [None, _row("disabled"), _row()], ids=["unknown", "disabled", "enabled"])
def test_every_login_runs_one_scrypt(monkeypatch, row):
    auth.password_matches(auth.LoginAttempt("/x", None, 0.0), "warm")  # the dummy hash, made once
    runs = []
    real = hashlib.scrypt

    def counted(*a, **kw):
        runs.append(kw.get("n"))
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    assert auth.password_matches(auth.LoginAttempt("/alice", row, 0.0), "wrong-password") is None
    assert runs == [auth.SCRYPT_N]  # the same work factor as a real user's hash


def test_the_right_password_of_an_enabled_user_only():
    assert auth.password_matches(auth.LoginAttempt("/alice", _row(), 0.0), "right-password").user_id == "u"
    assert auth.password_matches(auth.LoginAttempt("/alice", _row("disabled"), 0.0), "right-password") is None


def test_the_wait_doubles_after_the_free_failures_and_is_capped():
    assert [auth.login_wait(n, 0.0) for n in (0, 4, 5, 6, 7)] == [0, 0, 1, 2, 4]
    assert auth.login_wait(40, 0.0) == auth.LOGIN_MAX_WAIT_S
    assert auth.login_wait(2000, 0.0) == auth.LOGIN_MAX_WAIT_S  # 2.0 ** 1995 overflowed: a 530 for a day
    assert auth.login_wait(6, 1.5) == 0.5 and auth.login_wait(6, 3.0) == 0


def test_every_max_expires_ahead_the_config_allows_reaches_the_server(tmp_path):
    """[mgmt] allowed up to 7 days, the clone's own config only 3600 s: the agent
    died at start on a config that `tandem config check` had passed."""
    from tandem.cluster.clones import MgmtServerConfig
    from tandem.config import Mgmt
    longest = Mgmt.model_fields["max_expires_ahead"].metadata
    assert any(getattr(m, "le", None) == 7 * 86400 for m in longest)
    cfg = MgmtServerConfig(name="mgmt", node="node1", run_dir=tmp_path, listen_address="10.0.0.1",
                           db_host="10.0.0.100", db_name="cloud", db_user="tandem",
                           password_file=tmp_path / "pw", key_file=tmp_path / "key",
                           simhost="http://127.0.0.1:8250", max_expires_ahead=7 * 86400)
    assert cfg.max_expires_ahead == 7 * 86400
