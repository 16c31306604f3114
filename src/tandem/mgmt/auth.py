"""Who is calling: users, API keys, passwords and login sessions.

Everything lives in the database so that any management server can answer any
request: a session made through one node works through every other, and clients
never need sticky load balancing. Passwords are stored as scrypt hashes; session
keys are stored as their SHA-256, so a copy of the database does not hand out
live sessions. API secret keys must stay readable (the HMAC needs them), so they
are sealed with a key from a file outside the database (`secretbox`); they are
never logged and only returned by `registerUserKeys`/`getUserKeys`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from tandem.mgmt.db import Cursor, is_charset_error
from tandem.mgmt.migrations import ROOT_DOMAIN_ID
from tandem.mgmt.secretbox import SecretBox

ACCOUNT_USER, ACCOUNT_ADMIN, ACCOUNT_DOMAIN_ADMIN = 0, 1, 2
ROLE_NAMES = {ACCOUNT_USER: "User", ACCOUNT_ADMIN: "Admin", ACCOUNT_DOMAIN_ADMIN: "DomainAdmin"}
SESSION_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Caller:
    """The authenticated user of one request."""

    user_id: str
    username: str
    account_id: str
    account: str
    account_type: int
    domain_id: str
    domain: str
    firstname: str = ""
    lastname: str = ""

    @property
    def is_admin(self) -> bool:
        return self.account_type == ACCOUNT_ADMIN


_USER_SELECT = """SELECT u.id AS user_id, u.username, u.firstname, u.lastname, u.secretkey, u.password_hash,
    u.state AS user_state, a.id AS account_id, a.name AS account, a.type AS account_type,
    a.state AS account_state, d.id AS domain_id, d.name AS domain
    FROM user u JOIN account a ON a.id = u.account_id JOIN domain d ON d.id = a.domain_id"""


def _caller(row: dict[str, Any]) -> Caller:
    return Caller(user_id=row["user_id"], username=row["username"], account_id=row["account_id"],
                  account=row["account"], account_type=int(row["account_type"]), domain_id=row["domain_id"],
                  domain=row["domain"], firstname=row["firstname"], lastname=row["lastname"])


def _enabled(row: dict[str, Any] | None) -> bool:
    return bool(row) and row["user_state"] == "enabled" and row["account_state"] == "enabled"


# -- passwords ---------------------------------------------------------------------
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# -- users and keys ----------------------------------------------------------------
def create_user(cur: Cursor, username: str, password: str, *, account: str | None = None,
                account_type: int = ACCOUNT_USER, domain_id: str = ROOT_DOMAIN_ID) -> str:
    """Create an account (if needed) and a user in it; return the user id."""
    account = account or username
    cur.execute("SELECT id FROM account WHERE domain_id=%s AND name=%s", (domain_id, account))
    row = cur.fetchone()
    if row:
        account_id = row["id"]
    else:
        account_id = str(uuid.uuid4())
        cur.execute("INSERT INTO account (id, name, domain_id, type) VALUES (%s, %s, %s, %s)",
                    (account_id, account, domain_id, account_type))
    user_id = str(uuid.uuid4())
    cur.execute("INSERT INTO user (id, account_id, username, password_hash) VALUES (%s, %s, %s, %s)",
                (user_id, account_id, username, hash_password(password)))
    return user_id


def find_user_id(cur: Cursor, username: str, domain_id: str = ROOT_DOMAIN_ID) -> str | None:
    cur.execute("SELECT u.id FROM user u JOIN account a ON a.id=u.account_id WHERE u.username=%s"
                " AND a.domain_id=%s", (username, domain_id))
    row = cur.fetchone()
    return row["id"] if row else None


def new_keys() -> tuple[str, str]:
    """A fresh API key pair (apikey, secretkey)."""
    return secrets.token_urlsafe(64)[:86], secrets.token_urlsafe(64)[:86]


def register_keys(cur: Cursor, user_id: str, box: SecretBox,
                  keys: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """Store an API key pair for a user (replacing any old one; `keys`: minted by the
    caller, so that a write run again after a commit whose answer was lost stores the
    same pair it answers); the secret is stored sealed. None: no such user."""
    apikey, secretkey = keys or new_keys()
    cur.execute("SELECT id FROM user WHERE id=%s FOR UPDATE", (user_id,))
    if cur.fetchone() is None:
        return None
    cur.execute("UPDATE user SET apikey=%s, secretkey=%s WHERE id=%s",
                (apikey, box.seal(secretkey, user_id), user_id))
    return apikey, secretkey


def get_keys(cur: Cursor, user_id: str, box: SecretBox) -> tuple[str | None, str | None] | None:
    cur.execute("SELECT apikey, secretkey FROM user WHERE id=%s", (user_id,))
    row = cur.fetchone()
    if not row:
        return None
    return row["apikey"], (box.open(row["secretkey"], user_id) if row["secretkey"] else None)


def by_apikey(cur: Cursor, apikey: str, box: SecretBox) -> tuple[Caller, str] | None:
    """The caller owning an API key and its secret, if the user is enabled."""
    cur.execute(_USER_SELECT + " WHERE u.apikey=%s", (apikey,))
    row = cur.fetchone()
    if not _enabled(row) or not row["secretkey"]:
        return None
    return _caller(row), box.open(row["secretkey"], row["user_id"])


@functools.cache
def _no_such_user_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


# -- logins ------------------------------------------------------------------------
#: failed logins of one user name that cost nothing; each one more doubles the wait
#: before the next try, up to LOGIN_MAX_WAIT_S (CloudStack disables the user after 5:
#: anyone could then lock the admin out)
LOGIN_FREE_FAILURES = 5
LOGIN_MAX_WAIT_S = 300


@dataclass(frozen=True)
class LoginAttempt:
    """What a login needs from the database, read before the (slow) password check so
    that the check holds no database connection."""

    key: str  #: the user name as the failure counter knows it
    row: dict[str, Any] | None
    wait_s: float  #: > 0: too many failures; try again after this


def login_key(username: str, domain: str | None) -> tuple[str, str]:
    name = (domain or "").strip("/")
    domain_path = "/" if not name or name.upper() == "ROOT" else f"/{name}/"
    return domain_path, f"{domain_path}{username}".lower()[:300]  # names compare case-blind


def login_wait(failures: int, ago_s: float) -> float:
    if failures < LOGIN_FREE_FAILURES:
        return 0.0
    doublings = min(failures - LOGIN_FREE_FAILURES, 30)  # 2.0 ** 1024 overflows
    return max(0.0, min(2.0 ** doublings, LOGIN_MAX_WAIT_S) - ago_s)


def _utf8(text: str) -> bool:
    """False for text with lone surrogates, which the client library cannot send."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unstorable_key(key: str) -> str:
    """The failure counter's name for a user name the database cannot hold: plain
    ASCII, and never a real key (those start with "/")."""
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _count_failure(cur: Cursor, key: str) -> float:
    """The wait still due for `key`, or 0 after counting this attempt as a failure."""
    cur.execute("SELECT failures, TIMESTAMPDIFF(MICROSECOND, last_failure, NOW(6)) AS ago_us"
                " FROM login_failure WHERE name=%s FOR UPDATE", (key,))
    f = cur.fetchone()
    wait = login_wait(int(f["failures"]), int(f["ago_us"]) / 1e6) if f else 0.0
    if wait == 0:
        cur.execute("INSERT INTO login_failure (name, failures, last_failure) VALUES (%s, 1, NOW(6))"
                    " ON DUPLICATE KEY UPDATE failures = failures + 1, last_failure = NOW(6)", (key,))
    return wait


def login_attempt(cur: Cursor, username: str, domain: str | None) -> LoginAttempt:
    """Counted as a failure before the password is checked (a success takes it back):
    counted after, K requests sent at once all read the same count and all got
    their guess checked.

    A name the database cannot hold (text that is not even UTF-8, which the API
    refuses before it gets here; a character outside latin1 in a schema older than
    migration 8, on a server started with --no-migrate) names nobody: it is an
    unknown user, counted under a digest of itself, not a database error."""
    domain_path, key = login_key(username, domain)
    sendable = _utf8(username) and _utf8(domain or "")
    if not sendable:
        key = _unstorable_key(key)
    try:
        wait = _count_failure(cur, key)
    except Exception as e:
        if not is_charset_error(e):
            raise
        key = _unstorable_key(key)
        wait = _count_failure(cur, key)
    if wait > 0:
        return LoginAttempt(key, None, wait)
    row = None
    if sendable:
        try:
            cur.execute(_USER_SELECT + " WHERE u.username=%s AND d.path=%s", (username, domain_path))
            row = cur.fetchone()
        except Exception as e:
            if not is_charset_error(e):
                raise
    return LoginAttempt(key, row, 0.0)


def password_matches(attempt: LoginAttempt, password: str) -> Caller | None:
    """The scrypt check, as long for a user that does not exist or is disabled as for
    one that does (the time of the answer must not say which names exist)."""
    row = attempt.row
    stored = row["password_hash"] if _enabled(row) and row else _no_such_user_hash()
    ok = check_password(password, stored)
    return _caller(row) if ok and row and _enabled(row) else None


def clear_login_failures(cur: Cursor, key: str) -> None:
    cur.execute("DELETE FROM login_failure WHERE name=%s", (key,))


# -- sessions --------------------------------------------------------------------
def _key_hash(sessionkey: str) -> str:
    return hashlib.sha256(sessionkey.encode()).hexdigest()


def create_session(cur: Cursor, user_id: str, timeout_s: int = SESSION_TIMEOUT_S) -> tuple[str, str]:
    """Store a new session; return (sessionkey, jsessionid)."""
    sessionkey = secrets.token_urlsafe(27)
    jsessionid = secrets.token_hex(16).upper()
    cur.execute("INSERT INTO session (key_hash, user_id, jsessionid, timeout_s) VALUES (%s, %s, %s, %s)",
                (_key_hash(sessionkey), user_id, jsessionid, timeout_s))
    return sessionkey, jsessionid


def by_session(cur: Cursor, sessionkey: str) -> Caller | None:
    """The caller of a live session; touches `last_used` at most every 30 s."""
    cur.execute(_USER_SELECT.replace("SELECT ", "SELECT s.key_hash, "
                                     "TIMESTAMPDIFF(SECOND, s.last_used, NOW(6)) AS idle, s.timeout_s, ", 1)
                + " JOIN session s ON s.user_id = u.id WHERE s.key_hash=%s", (_key_hash(sessionkey),))
    row = cur.fetchone()
    if not _enabled(row) or row["idle"] > row["timeout_s"]:
        return None
    if row["idle"] >= 30:
        cur.execute("UPDATE session SET last_used=NOW(6) WHERE key_hash=%s", (row["key_hash"],))
    return _caller(row)


def delete_session(cur: Cursor, sessionkey: str) -> bool:
    cur.execute("DELETE FROM session WHERE key_hash=%s", (_key_hash(sessionkey),))
    return cur.rowcount == 1
