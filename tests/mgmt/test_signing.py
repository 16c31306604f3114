"""CloudStack's request signature: we accept exactly what the real clients
sign (cs and libcloud differ in sorting and escaping), and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cs.client import CloudStack
from libcloud.common.cloudstack import CloudStackConnection

from tandem.mgmt import signing

SECRET = "VDaACYb0LV9eNjTetIOElcVQkvJck_J_QljX_FcHRj87ZKiy0z0ty0ZsYBkoXkY9b7eq1EhwJaw7FF3akA3KBQ"
APIKEY = "plgWJfZK4gyS3mOMTVmjUVg-X-jlWlnfaUJ9GAbBbf9EdM-kAYMmAiLqzzq1ElZLYq_u38zCm0bewzGUdP66mg"
PARAMS = {"command": "deployVirtualMachine", "apiKey": APIKEY, "response": "json",
          "zoneId": "1128bd56-b4d9-4ac6-a7b9-c715b187ce11", "displayname": "a b+c/d~e*f[0]",
          "userdata": "SGVsbG8gd29ybGQ=", "serviceOfferingId": "1"}


def _cs_signature(params: dict[str, str]) -> str:
    data = dict(params)
    CloudStack(endpoint="http://x", key="k", secret=SECRET)._sign(data)
    return data["signature"]


def _libcloud_signature(params: dict[str, str]) -> str:
    conn = CloudStackConnection(user_id="k", key=SECRET)
    return conn._make_signature(dict(params)).decode()


def test_signatures_of_real_clients_are_accepted():
    for sig in (_cs_signature(PARAMS), _libcloud_signature(PARAMS), signing.sign(PARAMS, SECRET)):
        assert signing.signature_matches({**PARAMS, "signature": sig}, SECRET, sig)


def test_the_documented_cloudstack_example():
    # From CloudStack's "Signing API Requests" documentation.
    key = "miVr6X7u6bN_sdahOBpjNejPgEsT35eXq-jB8CG20YI3yaxXcgpyuaIRmFI_EJTVwZ0nUkkJbPmY3y2bciKwFQ"
    params = {"apikey": key,
              "command": "listZones", "response": "json"}
    secret = "Lxx1DM40AjcXU_yN2ycUVEhWtM_OMvLZ3eqsq9CmJTdRTTXVexZQSOSMKw7yCsOSZx1j9x_h7yFWnTsdAdm0A"
    assert signing.canonical_strings(params)[0] == (
        "apikey=mivr6x7u6bn_sdahobpjnejpgest35exq-jb8cg20yi3yaxxcgpyuairmfi_ejtvwz0nukkjbpmy3y2bcikwfq"
        "&command=listzones&response=json")
    assert signing.signature_matches(params, secret, signing.sign(params, secret))


def test_wrong_secret_tampered_or_garbage_signatures_are_refused():
    sig = _cs_signature(PARAMS)
    assert not signing.signature_matches(PARAMS, SECRET + "x", sig)
    assert not signing.signature_matches({**PARAMS, "zoneId": "2"}, SECRET, sig)
    assert not signing.signature_matches({**PARAMS, "extra": "1"}, SECRET, sig)
    assert not signing.signature_matches(PARAMS, SECRET, "not base64 !!")
    assert not signing.signature_matches(PARAMS, SECRET, "")


def test_expires():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert signing.check_expires("2024-05-01T12:10:00+0000", now)
    assert signing.check_expires("2024-05-01T14:10:00+02:00", now)
    assert signing.check_expires("2024-05-01T12:00:01Z", now)
    with pytest.raises(signing.ExpiresError, match="expired"):
        signing.check_expires("2024-05-01T11:59:59+0000", now)
    with pytest.raises(signing.ExpiresError, match="time zone"):
        signing.check_expires("2024-05-01T13:00:00", now)
    with pytest.raises(signing.ExpiresError, match="ISO 8601"):
        signing.check_expires("tomorrow", now)
    with pytest.raises(signing.ExpiresError, match="needs"):
        signing.check_expires(None, now)
    # signed to expire in the year 9999: replayable for ever
    with pytest.raises(signing.ExpiresError, match="at most 3600 s"):
        signing.check_expires("9999-12-31T23:59:59+0000", now)
    assert signing.check_expires("2024-05-01T13:00:00+0000", now)  # exactly an hour: fine
    with pytest.raises(signing.ExpiresError, match="3601 s ahead; this server accepts at most 3600 s"):
        signing.check_expires("2024-05-01T13:00:01+0000", now)
    assert signing.check_expires("2024-05-01T13:00:01+0000", now, max_ahead_s=7200)
    soon = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert signing.check_expires(soon)
