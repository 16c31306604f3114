"""The API surface against a real server process and a real MariaDB:
envelopes, errors, paging, authentication, and that refused requests change
nothing."""

from __future__ import annotations

import concurrent.futures
import json
import re
import xml.etree.ElementTree as ET

import requests

from tandem.mgmt import signing
from tests.mgmt.conftest import Api, MgmtProc, create_admin


def _counts(mariadb, database: str) -> dict[str, int]:
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        out = {}
        for table in ("vm", "async_job", "session", "user"):
            cur.execute(f"SELECT COUNT(*) FROM `{database}`.{table}")
            out[table] = cur.fetchone()[0]
        cur.execute(f"SELECT apikey, secretkey FROM `{database}`.user ORDER BY id")
        out["keys"] = hash(tuple(cur.fetchall()))
        return out


def _error(resp: requests.Response, status: int, name: str) -> str:
    body = resp.json()
    assert resp.status_code == status, body
    assert list(body) == [name], body
    err = body[name]
    assert err["errorcode"] == status and isinstance(err["cserrorcode"], int) and err["errortext"]
    return err["errortext"]


def test_envelopes_paging_filters_and_xml(cloud):
    api: Api = cloud["api"]
    zones = api("listZones")
    assert zones["count"] == 1 and zones["zone"][0]["name"] == "zone1"
    assert api("listZones", name="nope") == {}
    assert api("listPublicIpAddresses") == {}
    offerings = api("listServiceOfferings")
    assert offerings["count"] == 2
    page2 = api("listServiceOfferings", page=2, pagesize=1)
    assert page2["count"] == 2 and len(page2["serviceoffering"]) == 1
    assert page2["serviceoffering"][0]["id"] != api("listServiceOfferings", page=1, pagesize=1)[
        "serviceoffering"][0]["id"]
    assert api("listServiceOfferings", keyword="medium")["serviceoffering"][0]["memory"] == 2048
    assert api("listTemplates", templatefilter="executable")["template"][0]["name"] == "tandem-linux"
    assert api("listTemplates", templatefilter="self") == {}
    assert api("listNetworks")["network"][0]["traffictype"] == "Guest"
    assert api("listCapabilities")["capability"]["cloudstackversion"]
    apis = {a["name"]: a for a in api("listApis")["api"]}
    assert apis["deployVirtualMachine"]["isasync"] is True and apis["listZones"]["isasync"] is False

    p = api.params("listZones")
    p["response"] = "xml"
    p["signature"] = signing.sign({k: v for k, v in p.items() if k != "signature"}, api.secret)
    resp = requests.get(api.endpoint, params=p, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(resp.text)
    assert root.tag == "listzonesresponse" and root.findtext("count") == "1"
    assert root.find("zone/name").text == "zone1"


def test_errors_have_codes_and_change_nothing(cloud, mariadb):
    api: Api = cloud["api"]
    db = cloud["db"]
    before = _counts(mariadb, db)
    # unknown command
    assert "does not exist" in _error(api.raw("frobnicate"), 432, "errorresponse")
    # bad signature
    p = api.params("listZones")
    p["signature"] = p["signature"][:-4] + "AAA="
    _error(requests.get(api.endpoint, params=p, timeout=10), 401, "listzonesresponse")
    # tampered parameter after signing
    p = api.params("deployVirtualMachine", zoneid="6c2b9a4e-0000-4000-8000-000000000001")
    p["zoneid"] = "6c2b9a4e-0000-4000-8000-000000000002"
    _error(requests.get(api.endpoint, params=p, timeout=10), 401, "deployvirtualmachineresponse")
    # unknown key
    bad = Api(api.endpoint, "nosuchkey", api.secret)
    _error(bad.raw("listZones"), 401, "listzonesresponse")
    # expired signatureVersion 3
    text = _error(api.raw("listZones", expires_in=-5), 401, "listzonesresponse")
    assert "expired" in text
    # an expired request re-cut so that the signed string stays the same but
    # signatureVersion disappears (a name swallows it): refused, not replayable
    p = api.params("listZones", expires_in=-5)
    del p["response"], p["signatureVersion"]
    p["response=json&signatureVersion"] = "3"
    assert signing.signature_matches(p, api.secret, p["signature"])  # the forgery's premise
    resp = requests.get(api.endpoint, params=p, timeout=10)
    assert resp.status_code == 431 and "bad parameter name" in resp.text
    # an expiry without signatureVersion is checked all the same
    p = api.params("listZones", expires_in=-5)
    del p["signatureVersion"]
    p["signature"] = signing.sign(p, api.secret)
    assert "expired" in _error(requests.get(api.endpoint, params=p, timeout=10), 401, "listzonesresponse")
    # no credentials at all
    _error(requests.get(api.endpoint, params={"command": "listZones", "response": "json"}, timeout=10),
           401, "listzonesresponse")
    # missing and malformed parameters
    assert "missing parameter zoneid" in _error(api.raw("deployVirtualMachine"), 431,
                                                 "deployvirtualmachineresponse")
    text = _error(api.raw("deployVirtualMachine", zoneid="xyz", serviceofferingid="1", templateid="2"),
                  431, "deployvirtualmachineresponse")
    assert "zoneid" in text and "not a UUID" in text
    text = _error(api.raw("deployVirtualMachine", zoneid="6c2b9a4e-0000-4000-8000-00000000000f",
                          serviceofferingid="5b7f0c1e-0000-4000-8000-000000000001",
                          templateid="7e4d2a9c-0000-4000-8000-000000000001"),
                  431, "deployvirtualmachineresponse")
    assert "no such zone" in text
    _error(api.raw("listZones", pagesize="ten"), 431, "listzonesresponse")
    for page in ("18446744073709551616", "-9223372036854775809"):  # beyond what LIMIT/OFFSET take
        assert "out of range" in _error(api.raw("listZones", page=page, pagesize="1"), 431,
                                        "listzonesresponse")
    assert "out of range" in _error(api.raw("listZones", pagesize=str(2 ** 31)), 431, "listzonesresponse")
    _error(api.raw("listTemplates", templatefilter="bogus"), 431, "listtemplatesresponse")
    _error(api.raw("startVirtualMachine", id="00000000-0000-4000-8000-000000000000"), 431,
           "startvirtualmachineresponse")
    _error(api.raw("queryAsyncJobResult", jobid="00000000-0000-4000-8000-000000000000"), 431,
           "queryasyncjobresultresponse")
    # oversized request, as a query string and as a POST body
    p = api.params("listZones", name="x" * 70_000)
    resp = requests.post(api.endpoint + "?response=json", data=p, timeout=10)
    assert "too large" in _error(resp, 431, "errorresponse")
    assert "too large" in _error(requests.get(api.endpoint, params=p, timeout=10), 431, "errorresponse")
    assert _counts(mariadb, db) == before


def test_post_form_login_session_and_logout(cloud):
    server = cloud["server"]
    admin = cloud["admin"]
    s = requests.Session()
    r = s.post(server.endpoint, data={"command": "login", "username": "admin", "password": admin["password"],
                                      "response": "json"}, timeout=10)
    assert r.status_code == 200, r.text
    login = r.json()["loginresponse"]
    assert login["sessionkey"] and "JSESSIONID" in s.cookies
    assert s.cookies["sessionkey"] == login["sessionkey"]
    r = requests.get(server.endpoint, params={"command": "listZones", "response": "json",
                                              "sessionkey": login["sessionkey"]}, timeout=10)
    assert r.status_code == 200 and r.json()["listzonesresponse"]["count"] == 1
    # the cookie alone is not enough: a browser sends it with any request, also one that
    # another site makes it send (CSRF); the session key must be a parameter, as in CloudStack
    assert s.get(server.endpoint, params={"command": "listZones", "response": "json"}).status_code == 401
    assert "samesite=strict" in r.headers.get("Set-Cookie", "").lower() or \
        all(c.get_nonstandard_attr("SameSite", "").lower() == "strict" for c in s.cookies
            if c.name in ("sessionkey", "JSESSIONID"))
    bad = requests.post(server.endpoint, data={"command": "login", "username": "admin", "password": "wrong",
                                               "response": "json"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["loginresponse"]["errorcode"] == 401
    r = s.get(server.endpoint, params={"command": "logout", "response": "json",
                                       "sessionkey": login["sessionkey"]})
    assert r.status_code == 200
    r = requests.get(server.endpoint, params={"command": "listZones", "response": "json",
                                              "sessionkey": login["sessionkey"]}, timeout=10)
    assert r.status_code == 401


def test_user_keys_and_permissions(cloud, procs, mariadb):
    api: Api = cloud["api"]
    bob = create_admin(procs, mariadb, cloud["db"], "bob", user=True)
    bob_api = Api(api.endpoint, bob["apikey"], bob["secretkey"])
    keys = bob_api("getUserKeys", id=bob["userid"])["userkeys"]
    assert keys["apikey"] == bob["apikey"]
    r = bob_api.raw("getUserKeys", id=cloud["admin"]["userid"])
    assert r.status_code == 531
    # users see their own VMs; an admin sees everyone's with listall
    vm = bob_api("deployVirtualMachine", zoneid="6c2b9a4e-0000-4000-8000-000000000001",
                 serviceofferingid="5b7f0c1e-0000-4000-8000-000000000001",
                 templateid="7e4d2a9c-0000-4000-8000-000000000001", name="bobs")
    assert bob_api.wait_job(vm["jobid"])["jobresult"]["virtualmachine"]["account"] == "bob"
    assert api("listVirtualMachines") == {}
    assert api("listVirtualMachines", listall=True)["virtualmachine"][0]["id"] == vm["id"]
    assert bob_api.raw("stopVirtualMachine", id=vm["id"]).status_code == 200
    assert bob_api("listAsyncJobs")["count"] == 2 and api("listAsyncJobs") == {}
    r = requests.post(api.endpoint, data={"command": "login", "username": "bob", "password": bob["password"],
                                          "domain": "/", "response": "json"}, timeout=10)
    assert r.status_code == 200 and r.json()["loginresponse"]["type"] == 0
    new = api("registerUserKeys", id=bob["userid"])["userkeys"]
    assert new["apikey"] != bob["apikey"]
    assert bob_api.raw("listZones").status_code == 401
    assert Api(api.endpoint, new["apikey"], new["secretkey"])("listZones")["count"] == 1


def test_health_answers_while_the_database_does(cloud):
    r = requests.get(cloud["server"].base + "/health", timeout=5)
    assert r.status_code == 200 and r.json()["server"] == "mgmt1"


def test_secrets_never_logged(cloud, procs, mariadb):
    api: Api = cloud["api"]
    api("listZones")
    requests.post(cloud["server"].endpoint, data={"command": "login", "username": "admin",
                                                  "password": cloud["admin"]["password"]}, timeout=10)
    log = procs.log("mgmt1")
    for secret in (mariadb.password, cloud["admin"]["secretkey"], cloud["admin"]["password"]):
        assert secret not in log


def _login(server, username: str, password: str) -> requests.Response:
    return requests.post(server.endpoint, data={"command": "login", "username": username,
                                                "password": password, "response": "json"}, timeout=30)


def test_failed_logins_of_a_name_back_off_and_a_success_clears_them(cloud, mariadb):
    """No limit let anyone guess passwords as fast as scrypt ran. Names that do not
    exist are counted the same way, so the backoff does not tell which ones do."""
    server, admin, db = cloud["server"], cloud["admin"], cloud["db"]

    def failures() -> tuple:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT name, failures FROM `{db}`.login_failure ORDER BY name")
            return cur.fetchall()

    def set_row(sql: str) -> None:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"UPDATE `{db}`.login_failure SET {sql}")
            conn.commit()

    for name in ("admin", "nobody-here"):
        for i in range(5):  # the free ones; case does not make a new name
            set_row("last_failure = last_failure - INTERVAL 1 MINUTE")  # however slow the machine
            r = _login(server, name.upper() if i % 2 else name, "wrong")
            assert "unable to verify" in _error(r, 401, "loginresponse"), i
    assert failures() == (("/admin", 5), ("/nobody-here", 5))
    set_row("failures = 9, last_failure = NOW(6)")  # the ninth failure just now: 16 s to wait
    for name, password in (("admin", admin["password"]), ("nobody-here", "wrong")):
        r = _login(server, name, password)  # not even the right password is looked at
        text = _error(r, 401, "loginresponse")
        assert re.fullmatch(r"too many failed logins for this user: try again in 1[0-6] s", text), text
    assert failures() == (("/admin", 9), ("/nobody-here", 9))  # a refused try is not counted
    set_row("last_failure = last_failure - INTERVAL 1 MINUTE")  # the wait is over
    r = _login(server, "admin", admin["password"])
    assert r.status_code == 200 and r.json()["loginresponse"]["sessionkey"]
    assert failures() == (("/nobody-here", 9),)  # a success clears its own name only


def test_a_name_outside_latin1_is_answered_like_an_unknown_one(cloud, mariadb):
    """A name outside latin1 (the tables' character set before migration 8) made
    MariaDB refuse the comparison (1267) and the login answered 530. The tables hold
    any text now: such a name is an unknown one like any other, counted under its own
    key and backed off the same."""
    server, db = cloud["server"], cloud["db"]
    names = ("\u540d\u524d", "bob\U0001f600")

    def failures() -> tuple:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT name, failures FROM `{db}`.login_failure WHERE name NOT LIKE '/nobody%'"
                        " ORDER BY name")
            return cur.fetchall()

    def set_rows(sql: str) -> None:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"UPDATE `{db}`.login_failure SET {sql}")
            conn.commit()

    unknown = _login(server, "nobody-here", "wrong").json()
    for name in names:
        for i in range(5):
            set_rows("last_failure = last_failure - INTERVAL 1 MINUTE")  # however slow the machine
            r = _login(server, name, "wrong")
            assert _error(r, 401, "loginresponse") == "unable to verify user credentials", i
            assert r.json() == unknown
    assert sorted(failures()) == sorted((f"/{n}", 5) for n in names)  # each emoji its own name
    set_rows("failures = 9, last_failure = NOW(6)")
    for name in names:
        text = _error(_login(server, name, "wrong"), 401, "loginresponse")
        assert re.fullmatch(r"too many failed logins for this user: try again in 1[0-6] s", text), text


def test_logins_sent_at_once_cannot_all_be_guesses(cloud, mariadb):
    """Counted after the check, K requests in flight all read the same count and all
    had their password checked: the backoff held back only one-at-a-time guessing."""
    server = cloud["server"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _login(server, "admin", "wrong").json()["loginresponse"],
                                range(16)))
    checked = [a for a in answers if "unable to verify" in a["errortext"]]
    refused = [a for a in answers if "too many failed logins" in a["errortext"]]
    assert len(checked) + len(refused) == 16, answers
    # five free failures, and the few that a slow machine lets in as a wait runs out
    assert 5 <= len(checked) <= 8 and refused, [a["errortext"] for a in answers]


def test_a_server_that_requires_expires_refuses_version_2_and_far_expiry(cloud, procs, mariadb):
    """A version 2 request never expires: one seen on the wire (the API is plain HTTP
    behind haproxy) could be sent again for ever. With --require-expires it is refused;
    an `expires` beyond --max-expires-ahead is refused on every server."""
    from tests.mgmt.conftest import MgmtProc
    admin = cloud["admin"]
    strict = MgmtProc(procs, mariadb, cloud["db"], cloud["host"], "mgmt-strict",
                      extra=("--require-expires", "--max-expires-ahead", "900"))
    api = Api(strict.endpoint, admin["apikey"], admin["secretkey"])
    r = requests.get(api.endpoint, params=api.params("listZones", version3=False), timeout=10)
    assert "needs an 'expires' parameter" in _error(r, 401, "listzonesresponse")
    r = requests.get(api.endpoint, params=api.params("listZones", expires_in=3000), timeout=10)
    assert "this server accepts at most 900 s" in _error(r, 401, "listzonesresponse")
    assert api("listZones")["count"] == 1  # 600 s ahead, version 3: fine
    lax = cloud["api"]  # the default server: version 2 still works (CloudStack clients that sign v2)
    assert requests.get(lax.endpoint, params=lax.params("listZones", version3=False),
                        timeout=10).status_code == 200
    r = requests.get(lax.endpoint, params=lax.params("listZones", expires_in=3700), timeout=10)
    assert "at most 3600 s" in _error(r, 401, "listzonesresponse")


# -- text and bytes the server must refuse cleanly, never with a 530 ----------------------
ZONE1 = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


def _no_traceback(procs, name: str = "mgmt1") -> None:
    log = procs.log(name)
    assert "Traceback" not in log and "status=530" not in log, log[-3000:]


def _raw_http(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no client library would (raw non-UTF-8 in the request line); the answer."""
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_text_outside_latin1_is_stored_found_and_echoed(cloud, procs):
    """The tables took the server's default character set (latin1): 名前 in a name
    filter, a keyword, a display name or an API key made MariaDB refuse the statement
    (1267/1366) and every command but login answered 530 with a traceback. CloudStack's
    tables are UTF-8: such text is stored and found like any other."""
    api: Api = cloud["api"]
    server = cloud["server"]
    assert api("listZones", name="名前") == {}
    assert api("listVirtualMachines", keyword="名") == {}
    assert api("listUsers", username="名") == {}
    assert api("listTemplates", templatefilter="all", name="bob\U0001f600") == {}
    r = requests.get(server.endpoint, params={"command": "listZones", "response": "json", "apikey": "名",
                                              "signature": "x"}, timeout=10)
    _error(r, 401, "listzonesresponse")
    vm = api("deployVirtualMachine", zoneid=ZONE1, serviceofferingid=SMALL, templateid=TEMPLATE,
             name="web1", displayname="名前 \U0001f600")
    assert api.wait_job(vm["jobid"])["jobstatus"] == 1
    [found] = api("listVirtualMachines", keyword="名前")["virtualmachine"]
    assert found["id"] == vm["id"] and found["displayname"] == "名前 \U0001f600"
    assert api("listVirtualMachines", keyword="\U0001f601") == {}  # another emoji is another character
    p = api.params("listVirtualMachines", keyword="名前")
    p["response"] = "xml"
    p["signature"] = signing.sign({k: v for k, v in p.items() if k != "signature"}, api.secret)
    resp = requests.get(api.endpoint, params=p, timeout=10)
    assert resp.status_code == 200
    assert ET.fromstring(resp.content).findtext("virtualmachine/displayname") == "名前 \U0001f600"
    _no_traceback(procs)


def test_malformed_bodies_and_bytes_are_refused_with_431(cloud, procs, mariadb):
    """A form body that is not form data, raw non-UTF-8 bytes in the query string and
    control characters XML cannot carry: each used to end in a 530 (or a bare 500
    for XML), with a traceback; now CloudStack's 431 in the usual envelope."""
    api: Api = cloud["api"]
    server = cloud["server"]
    form = "application/x-www-form-urlencoded"
    for ctype, body in ((form, b"command=listZones&response=json&name=\xff"),
                        (form + "; charset=bogus", b"command=listZones&response=json"),
                        ("multipart/form-data; boundary=zzz", b"--zzz\r\nbroken"),
                        ("multipart/form-data", b"no boundary at all"),
                        # aiohttp raises RuntimeError for these two (review 23): a 530 before
                        ("multipart/form-data; boundary=X", b'--X\r\nContent-Disposition: form-data;'
                         b' name="a"\r\nContent-Transfer-Encoding: bogus\r\n\r\nv\r\n--X--\r\n'),
                        ("multipart/form-data; boundary=X", b'--X\r\nContent-Disposition: form-data;'
                         b' name="_charset_"\r\n\r\n' + b"u" * 40 + b"\r\n--X--\r\n")):
        r = requests.post(server.endpoint + "?response=json", data=body, headers={"Content-Type": ctype},
                          timeout=10)
        assert "not valid form data" in _error(r, 431, "errorresponse"), (ctype, body)
    # raw 0xff in the query string: aiohttp's compiled parser refuses it (400, its own
    # answer), and its log line quoted the whole request (key, signature, a password)
    p = api.params("listZones")
    query = "&".join(f"{k}={requests.utils.quote(v, safe='')}" for k, v in p.items()).encode()
    raw = (query + b"&name=\xff", query + b"&\xff=1", b"command=\xff&response=json")
    for q in raw:
        status, _, body = _raw_http(server, b"GET /client/api?" + q + b" HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
        assert status == 400, body
    log = procs.log("mgmt1")
    assert "malformed HTTP request" in log and api.apikey not in log and p["signature"][:12] not in log
    # the pure-Python one (AIOHTTP_NO_EXTENSIONS, or no compiled wheel) passes it on as
    # lone surrogates, which nothing could encode again: signing, the database, the answer
    py = MgmtProc(procs, mariadb, cloud["db"], cloud["host"], "mgmt-py", env={"AIOHTTP_NO_EXTENSIONS": "1"})
    for q in raw:  # refused with the parameters, before the command is looked up
        status, _, body = _raw_http(py, b"GET /client/api?" + q + b" HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
        assert status == 431, body
        err = json.loads(body)["errorresponse"]
        assert err["errorcode"] == 431 and "not valid UTF-8" in err["errortext"], err
    status, _, body = _raw_http(py, b"GET /client/api?command=\xff&response=xml HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert status == 431 and ET.fromstring(body).findtext("errorcode") == "431", body
    _no_traceback(procs, "mgmt-py")
    # percent-encoded bytes that are not UTF-8
    r = requests.get(api.endpoint + "?command=%FF%FE&response=xml", timeout=10)
    assert r.status_code in (431, 432)
    assert ET.fromstring(r.content).findtext("errorcode") == str(r.status_code)
    # control characters XML 1.0 cannot hold, in a value, as XML and as JSON
    for value in ("a\x01b", "\x00", "x\x1b[31m"):
        for fmt in ("json", "xml"):
            p = api.params("listZones", name=value)
            p["response"] = fmt
            p["signature"] = signing.sign({k: v for k, v in p.items() if k != "signature"}, api.secret)
            r = requests.get(api.endpoint, params=p, timeout=10)
            assert r.status_code == 431, (value, fmt, r.text)
            if fmt == "xml":
                assert ET.fromstring(r.content).findtext("errorcode") == "431"
            else:
                assert "control character" in _error(r, 431, "errorresponse")
    # the command name echoed in a 432 as XML stays well-formed
    r = requests.get(api.endpoint, params={"command": "no<such>&cmd", "response": "xml"}, timeout=10)
    assert r.status_code == 432 and ET.fromstring(r.content).findtext("errorcode") == "432"
    assert api("listZones")["count"] == 1  # tabs, newlines and the rest still pass
    assert api("listZones", name="zone1\t") == {}
    _no_traceback(procs)


def test_xml_never_carries_characters_xml_forbids():
    """The last line of defence: text from anywhere (a row written before the
    parameters were checked) is made well-formed."""
    from tandem.mgmt.envelopes import to_xml
    text = to_xml("r", {"a": "x\x00y\x1f\ud800\ufffe<&>\t\n\r\u00e9\U0001f600", "b": ["\x07"]})
    root = ET.fromstring(text.encode())
    assert root.findtext("a") == "x\ufffdy\ufffd\ufffd\ufffd<&>\t\n\r\u00e9\U0001f600"
    assert root.findtext("b") == "\ufffd"


def test_names_dates_and_secrets_in_parameters(cloud, procs):
    """A VM name ending in a newline passed the hostname check (`$` matches before a
    final newline); a start date the UTC conversion overflows gave a 530; a password
    that is too long was echoed (its first 60 characters) in the 431."""
    api: Api = cloud["api"]
    server = cloud["server"]
    for name in ("web1\n", "web1\n\n", "\nweb1"):
        text = _error(api.raw("deployVirtualMachine", zoneid=ZONE1, serviceofferingid=SMALL,
                              templateid=TEMPLATE, name=name), 431, "deployvirtualmachineresponse")
        assert "Invalid name" in text
    assert api("listVirtualMachines", listall=True) == {}
    for start in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        assert "startdate" in _error(api.raw("listAsyncJobs", startdate=start), 431, "listasyncjobsresponse")
    assert api("listAsyncJobs", startdate="2024-01-01T00:00:00+01:00") == {}
    password = "hunter2-" + "p" * 1100
    r = requests.post(server.endpoint, data={"command": "login", "username": "admin", "password": password,
                                             "response": "json"}, timeout=10)
    text = _error(r, 431, "loginresponse")
    assert "password" in text and "hunter2" not in text and "ppp" not in text
    _no_traceback(procs)


def test_every_table_is_utf8mb4_and_latin1_rows_survive_the_conversion(mariadb, database):
    """Migration 8 converts the latin1 tables of an older schema; a new one ends the
    same. Names compare case-blind (as `login_key` expects) but accent-sensitive,
    and each emoji is its own character."""
    from tandem.mgmt import auth
    from tandem.mgmt.db import Database, DbUrl
    from tandem.mgmt.migrations import COLLATION, TABLES, migrate

    def schema(name: str) -> tuple[dict, set, str]:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES"
                        " WHERE TABLE_SCHEMA=%s", (name,))
            tables = dict(cur.fetchall())
            cur.execute("SELECT DISTINCT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s"
                        " AND COLLATION_NAME IS NOT NULL", (name,))
            columns = {c for (c,) in cur.fetchall()}
            cur.execute("SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s",
                        (name,))
            return tables, columns, cur.fetchone()[0]

    fresh = mariadb.create_database()
    for name in (database, fresh):
        db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=name,
                            password=mariadb.password))
        try:
            if name == database:  # an older server's schema, with a row in latin1
                assert migrate(db, target=7) == [1, 2, 3, 4, 5, 6, 7]
                old = schema(name)[0]
                del old["schema_version"]  # created before the migrations, in utf8mb4 now
                assert set(old.values()) == {"latin1_swedish_ci"}  # the premise
                uid = db.write_sync(lambda cur: auth.create_user(cur, "m\u00fcller", "pw-123456"))
                assert migrate(db) == [8, 9]
            else:
                assert migrate(db)[-1] == 9
                uid = db.write_sync(lambda cur: auth.create_user(cur, "m\u00fcller", "pw-123456"))
            tables, columns, default = schema(name)
            assert set(tables) == set(TABLES) and set(tables.values()) == {COLLATION}, tables
            assert columns == {COLLATION} and default == COLLATION
            assert db.read_sync(lambda cur: auth.find_user_id(cur, "M\u00dcLLER")) == uid
            assert db.read_sync(lambda cur: auth.find_user_id(cur, "muller")) is None
            emoji = db.write_sync(lambda cur: auth.create_user(cur, "bob\U0001f600", "pw-123456"))
            assert db.read_sync(lambda cur: auth.find_user_id(cur, "bob\U0001f600")) == emoji
            assert db.read_sync(lambda cur: auth.find_user_id(cur, "bob\U0001f601")) is None
            assert migrate(db) == []
        finally:
            db.close()


def test_a_server_on_a_latin1_schema_answers_431_not_530(procs, mariadb, database, mgmt_key_file):
    """The safety net: a server started with --no-migrate on a schema older than
    migration 8 (latin1 tables) still refuses text the tables cannot hold with
    CloudStack's 431, not a 530 with a traceback; a login names nobody (401)."""
    from tandem.mgmt import auth
    from tandem.mgmt.db import Database, DbUrl
    from tandem.mgmt.migrations import migrate
    from tandem.mgmt.secretbox import SecretBox
    from tests.mgmt.conftest import SimHostProc

    db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=database,
                        password=mariadb.password))
    try:
        migrate(db, target=7)
        box = SecretBox.from_file(mgmt_key_file)

        def user(cur):
            uid = auth.create_user(cur, "admin", "pw-123456", account_type=auth.ACCOUNT_ADMIN)
            return auth.register_keys(cur, uid, box)
        apikey, secret = db.write_sync(user)
    finally:
        db.close()
    host = SimHostProc(procs)
    server = MgmtProc(procs, mariadb, database, host, "mgmt-old", extra=("--no-migrate",))
    api = Api(server.endpoint, apikey, secret)
    assert api("listZones")["count"] == 1
    text = _error(api.raw("listZones", name="\u540d\u524d"), 431, "listzonesresponse")
    assert "characters the database cannot store" in text
    _error(api.raw("deployVirtualMachine", zoneid=ZONE1, serviceofferingid=SMALL, templateid=TEMPLATE,
                   displayname="\u540d\u524d"), 431, "deployvirtualmachineresponse")
    assert api("listVirtualMachines", listall=True) == {}
    r = requests.get(server.endpoint, params={"command": "listZones", "response": "json",
                                              "apikey": "\u540d", "signature": "x"}, timeout=10)
    _error(r, 401, "listzonesresponse")
    assert "unable to verify" in _error(_login(server, "\u540d\u524d", "wrong"), 401, "loginresponse")
    _no_traceback(procs, "mgmt-old")


def test_pages_of_a_list_are_complete_and_disjoint(cloud, mariadb):
    """Lists sorted by a name many rows share had no tie-breaker: MariaDB's sort under
    LIMIT is not stable, and a client paging through saw some rows twice and others
    never. listUsers ignored page and pagesize altogether."""
    from tandem.mgmt import auth
    from tandem.mgmt.db import Database, DbUrl
    api: Api = cloud["api"]
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{cloud['db']}`")
        for _ in range(60):
            cur.execute("INSERT INTO template (id, name, displaytext, ostypeid, zone_id, size) SELECT UUID(),"
                        " 'same', 'same', ostypeid, zone_id, size FROM template WHERE name='tandem-linux'")
    seen: list[str] = []
    for page in range(1, 10):
        got = api("listTemplates", templatefilter="all", name="same", page=page, pagesize=7)
        assert got["count"] == 60
        seen += [t["id"] for t in got["template"]]
    assert len(seen) == 60 and len(set(seen)) == 60

    db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=cloud["db"],
                        password=mariadb.password))
    try:
        for name in ("carol", "dave", "erin"):
            db.write_sync(lambda cur, name=name: auth.create_user(cur, name, "pw-123456"))
    finally:
        db.close()
    everyone = api("listUsers", listall=True)
    assert everyone["count"] == 4 and len(everyone["user"]) == 4
    pages = [api("listUsers", listall=True, page=n, pagesize=3) for n in (1, 2)]
    assert [p["count"] for p in pages] == [4, 4] and [len(p["user"]) for p in pages] == [3, 1]
    assert sorted(u["id"] for p in pages for u in p["user"]) == sorted(u["id"] for u in everyone["user"])
    assert [u["username"] for u in api("listUsers", listall=True, keyword="AR")["user"]] == ["carol"]


def test_head_is_answered_like_get(cloud):
    """CloudStack answers HEAD as GET (without the body); ours said 405."""
    api: Api = cloud["api"]
    r = requests.head(api.endpoint, params=api.params("listZones"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json") and not r.content
    r = requests.head(api.endpoint, params={"command": "listZones", "response": "json"}, timeout=10)
    assert r.status_code == 401


def test_a_job_row_that_cannot_be_read_fails_and_the_server_runs_the_next(cloud, mariadb):
    """A pending job whose params are not JSON (a hand edit, a newer schema) raised out
    of the dispatch loop and ended it for good while the heartbeat went on: no job of
    that server ran again, and none was taken over (review 35)."""
    import uuid
    api: Api = cloud["api"]
    server = cloud["server"]
    db = cloud["db"]
    bad = str(uuid.uuid4())
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT account_id, id FROM `{db}`.user WHERE username='admin'")
        account, user = cur.fetchone()
        cur.execute(f"INSERT INTO `{db}`.async_job (id, cmd, instance_type, instance_id, params,"
                    " account_id, user_id, owner, status) VALUES (%s, 'deployVirtualMachine',"
                    " 'VirtualMachine', %s, '{not json', %s, %s, %s, 0)",
                    (bad, str(uuid.uuid4()), account, user, server.server_id))
    vm = api("deployVirtualMachine", zoneid=ZONE1, serviceofferingid=SMALL, templateid=TEMPLATE,
             name="after-bad-row")
    assert api.wait_job(vm["jobid"])["jobstatus"] == 1
    failed = api.wait_job(bad)
    assert failed["jobstatus"] == 2, failed
    assert "cannot be read" in failed["jobresult"]["errortext"], failed
    assert f"job {bad}: cannot read its row" in server.procs.log(server.server_id)


def test_a_private_featured_template_is_listed_only_to_its_account(cloud, procs, mariadb):
    """templatefilter=featured asked only for the flag, not who may see it: a private
    template marked featured was listed to every account (review 35)."""
    import uuid
    api: Api = cloud["api"]
    db = cloud["db"]
    bob = create_admin(procs, mariadb, db, "bob", user=True)
    bob_api = Api(api.endpoint, bob["apikey"], bob["secretkey"])
    private = str(uuid.uuid4())
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT account_id FROM `{db}`.user WHERE username='admin'")
        (admin_account,) = cur.fetchone()
        cur.execute(f"INSERT INTO `{db}`.template (id, name, displaytext, ostypeid, zone_id, featured,"
                    " public, account_id, size) SELECT %s, 'admins-own', 'private', ostypeid, zone_id,"
                    f" TRUE, FALSE, %s, 1 FROM `{db}`.template WHERE id=%s",
                    (private, admin_account, TEMPLATE))

    def featured(client: Api) -> set[str]:
        return {t["id"] for t in client("listTemplates", templatefilter="featured")["template"]}
    assert featured(api) == {TEMPLATE, private}
    assert featured(bob_api) == {TEMPLATE}
