"""Login, logout and API keys.

Sessions are rows in the database (see `auth`), so the `sessionkey` a client
gets from one server works on all of them, and survives the server's death.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from tandem.mgmt import auth
from tandem.mgmt.commands import PAGING, Call, Param, command
from tandem.mgmt.db import Cursor
from tandem.mgmt.envelopes import ACCOUNT_ERROR, UNAUTHORIZED, ApiError, Response, param_error
from tandem.mgmt.listing import Query, run_list


@command("login", Param("username", required=True),
         Param("password", required=True, max_length=1024, secret=True), Param("domain"),
         Param("domainid", "uuid"), needs_auth=False)
async def login(call: Call) -> Response:
    """Logs a user in with a password; answers a sessionkey valid on every server.

    The password check (scrypt, tens of ms) runs outside the database's threads, a
    few at a time: a flood of logins used to hold every connection of the pool, and
    the job manager's heartbeats behind them slipped until peers took our jobs over.
    Failed logins of a name are counted in the database (every server sees them):
    after five, each try waits twice as long as the last, up to five minutes. Each
    attempt counts as a failure until its password proved right."""
    p = call.params
    db = call.server.db
    attempt = await db.write(lambda cur: auth.login_attempt(cur, p["username"], p.get("domain")))
    if attempt.wait_s > 0:
        raise ApiError(UNAUTHORIZED, f"too many failed logins for this user: try again in"
                                     f" {math.ceil(attempt.wait_s)} s")
    async with call.server.password_checks:
        caller = await asyncio.get_running_loop().run_in_executor(
            None, auth.password_matches, attempt, p["password"])
    if caller is None:  # counted already
        raise ApiError(UNAUTHORIZED, "unable to verify user credentials")

    def write(cur: Cursor) -> tuple[str, str]:
        auth.clear_login_failures(cur, attempt.key)
        return auth.create_session(cur, caller.user_id)

    key, jsession = await db.write(write)
    body = {"username": caller.username, "userid": caller.user_id, "domainid": caller.domain_id,
            "timeout": auth.SESSION_TIMEOUT_S, "account": caller.account, "firstname": caller.firstname,
            "lastname": caller.lastname, "type": caller.account_type, "registered": False,
            "sessionkey": key}
    cookies = {"JSESSIONID": jsession, "sessionkey": key, "userid": caller.user_id,
               "account": caller.account, "domainid": caller.domain_id, "role": str(caller.account_type),
               "username": caller.username, "timezone": ""}
    return Response(body, cookies=cookies)


@command("logout")
async def logout(call: Call) -> Response:
    """Ends the calling session (on every server)."""
    if call.sessionkey:
        key = call.sessionkey
        await call.server.db.write(lambda cur: auth.delete_session(cur, key), idempotent=True)
    return Response({"description": "success"}, cookies={"sessionkey": "", "JSESSIONID": ""})


def _may_manage(call: Call, user_id: str) -> None:
    caller = call.caller
    assert caller is not None
    if not caller.is_admin and caller.user_id != user_id:
        raise ApiError(ACCOUNT_ERROR, "only an admin may manage another user's keys")


@command("registerUserKeys", Param("id", "uuid", required=True, description="the user ID"))
async def register_user_keys(call: Call) -> Response:
    """Generates a new API key and secret key for a user."""
    user_id = call.params["id"]
    _may_manage(call, user_id)
    box = call.server.box
    # Not idempotent: the old pair stops working once this commits. Run as idempotent,
    # a commit whose answer was lost was run again, and a database still unreachable
    # then said "unreachable; try again" with the old key already dead and the new
    # pair never told (review 35). Now a lost answer is looked up by the commit's
    # marker, and one that cannot be learned is reported as such. Minted once, so a
    # run repeated before any commit stores the pair it answers.
    minted = auth.new_keys()
    keys = await call.server.db.write(lambda cur: auth.register_keys(cur, user_id, box, minted))
    if keys is None:
        raise param_error(f"Unable to find user by id {user_id}")
    return Response({"userkeys": {"apikey": keys[0], "secretkey": keys[1]}})


@command("getUserKeys", Param("id", "uuid", required=True, description="the user ID"))
async def get_user_keys(call: Call) -> Response:
    """Answers the API key and secret key of a user."""
    user_id = call.params["id"]
    _may_manage(call, user_id)
    keys = await call.server.db.read(lambda cur: auth.get_keys(cur, user_id, call.server.box))
    if keys is None:
        raise param_error(f"Unable to find user by id {user_id}")
    return Response({"userkeys": {"apikey": keys[0], "secretkey": keys[1]}})


@command("listUsers", Param("id", "uuid"), Param("username"), Param("listall", "boolean"), *PAGING)
async def list_users(call: Call) -> Response:
    """Lists users (the caller alone unless an admin asks with listall)."""
    caller = call.caller
    assert caller is not None
    q = Query("SELECT u.*, a.name AS account, a.type AS accounttype, a.domain_id, d.name AS domain"
              " FROM user u JOIN account a ON a.id=u.account_id JOIN domain d ON d.id=a.domain_id",
              "u.created, u.id")
    q.filters(call, {"id": "u.id", "username": "u.username"}, ("u.username", "u.firstname", "u.lastname"))
    if not (caller.is_admin and call.params.get("listall")):
        q.add("u.account_id=%s", caller.account_id)
    return Response(await run_list(call, q, "user", _user))


def _user(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "username": r["username"], "firstname": r["firstname"], "lastname": r["lastname"],
            "email": r["email"], "account": r["account"], "accounttype": r["accounttype"],
            "domainid": r["domain_id"], "domain": r["domain"], "state": r["state"], "apikey": r["apikey"]}
