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


class Latin1Cursor:
    """MariaDB with latin1 columns, as far as a login goes: a parameter the column
    cannot hold is refused (1267) like the server does; no user exists."""

    def __init__(self):
        self.failures: dict[str, int] = {}
        self.statements: list[tuple[str, tuple]] = []
        self._result = None

    def execute(self, sql: str, args: tuple = ()) -> None:
        import pymysql
        self.statements.append((sql, args))
        for a in args:
            a.encode()  # what pymysql does first: a lone surrogate fails here, client-side
            try:
                a.encode("latin1")
            except UnicodeEncodeError:
                raise pymysql.err.OperationalError(
                    1267, "Illegal mix of collations (latin1_swedish_ci,IMPLICIT) and"
                          " (utf8mb4_general_ci,COERCIBLE) for operation '='") from None
        if "FROM login_failure" in sql:
            n = self.failures.get(args[0])
            self._result = {"failures": n, "ago_us": 0} if n else None
        elif "INSERT INTO login_failure" in sql:
            self.failures[args[0]] = self.failures.get(args[0], 0) + 1
        else:
            self._result = None  # the user lookup: nobody

    def fetchone(self):
        return self._result


@pytest.mark.parametrize("name", ["\u540d\u524d", "bob\U0001f600", "x\ud800"],
                         ids=["cjk", "emoji", "surrogate"])
def test_a_name_the_database_cannot_hold_is_an_unknown_user(monkeypatch, name):
    """It used to reach MariaDB as a comparison with a latin1 column: error 1267 and
    HTTP 530. Now: no user, one scrypt against the dummy hash, the failures counted
    (under a digest of the name) and backed off like any unknown name's."""
    cur = Latin1Cursor()
    attempt = auth.login_attempt(cur, name, None)
    assert attempt.row is None and attempt.wait_s == 0 and attempt.key.startswith("#")
    assert cur.failures == {attempt.key: 1}
    auth.password_matches(auth.LoginAttempt("/x", None, 0.0), "warm")  # the dummy hash, made once
    checked = []
    real = auth.check_password
    monkeypatch.setattr(auth, "check_password", lambda pw, stored: checked.append(stored) or real(pw, stored))
    assert auth.password_matches(attempt, "some-password") is None
    assert checked == [auth._no_such_user_hash()]
    for _ in range(auth.LOGIN_FREE_FAILURES - 1):
        assert auth.login_attempt(cur, name, None).wait_s == 0
    again = auth.login_attempt(cur, name, None)
    assert again.key == attempt.key and again.wait_s > 0  # like "/nobody" after five failures
    plain = Latin1Cursor()
    assert auth.login_attempt(plain, "nobody", None).key == "/nobody"  # storable names keep their key


def test_other_database_errors_still_fail_the_login():
    import pymysql

    class Broken(Latin1Cursor):
        def execute(self, sql, args=()):
            raise pymysql.err.OperationalError(1146, "Table 'login_failure' doesn't exist")

    with pytest.raises(pymysql.err.OperationalError):
        auth.login_attempt(Broken(), "\u540d\u524d", None)


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
