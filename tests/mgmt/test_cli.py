"""`tandem mgmt ...` as an operator meets it: one-line errors, no secrets on
screen, and jobs that fail cleanly when the host is gone."""

from __future__ import annotations

import os
import subprocess

from tests.mgmt.conftest import Api, MgmtProc, SimHostProc, create_admin, free_port, mgmt_cmd

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mgmt_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_operator_errors_are_one_line_without_secrets(mariadb, database, procs):
    wrong = "not-the-password-123"
    out = _run("serve", "--db", mariadb.url(database), "--server-id", "x", "--listen",
               f"127.0.0.1:{free_port()}", env={"TANDEM_DB_PASSWORD": wrong})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "Access denied" in out.stderr and wrong not in out.stderr + out.stdout
    out = _run("serve", "--db", "postgres://x@y/z", "--server-id", "x")
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        "tandem: --db: expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?ssl-ca=CA_FILE]"]
    out = _run("serve", "--db", mariadb.url(database) + "?sslmode=disable", "--server-id", "x")
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        "tandem: --db: unknown or repeated option sslmode (the one option is ?ssl-ca=CA_FILE, for TLS)"]
    out = _run("serve", "--db", mariadb.url(database) + "?ssl-ca=/nonexistent/ca.crt", "--server-id", "x")
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("tandem: --db ssl-ca /nonexistent/ca.crt: cannot load the CA"), lines
    out = _run("serve", "--db", mariadb.url(database), "--server-id", "x", "--listen", "nowhere")
    assert out.stderr.strip() == "tandem: --listen: expected ADDRESS:PORT, got 'nowhere'"
    env = {"TANDEM_DB_PASSWORD": mariadb.password}
    out = _run("migrate", "--db", mariadb.url(database), env=env)
    assert out.returncode == 0 and "schema at version" in out.stdout
    create_admin(procs, mariadb, database, "ops")
    (procs.root / "pw").write_text("another-password")
    (procs.root / "pw").chmod(0o600)
    out = _run("create-admin", "--db", mariadb.url(database), "--username", "ops", "--password-file",
               str(procs.root / "pw"), env=env)
    assert out.returncode != 0 and out.stderr.strip() == "tandem: user 'ops' already exists"


def test_secret_files_that_others_can_read_are_refused(mariadb, database, procs):
    """A key or password file every local user can read is a secret in name only."""
    key = procs.root / "key"
    key.write_text("k" * 64)
    key.chmod(0o644)
    out = _run("create-admin", "--db", mariadb.url(database), "--key-file", str(key), "--username", "x",
               "--password-file", str(key), env={"TANDEM_DB_PASSWORD": mariadb.password})
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"tandem: key file {key} is readable by others (chmod 600 it)"]
    pw = procs.root / "db-pw"
    pw.write_text(mariadb.password)
    pw.chmod(0o640)
    out = _run("migrate", "--db", mariadb.url(database), "--db-password-file", str(pw))
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"tandem: --db-password-file {pw} is readable by others (chmod 600 it)"]
    assert mariadb.password not in out.stderr + out.stdout
    pw.chmod(0o600)
    assert _run("migrate", "--db", mariadb.url(database), "--db-password-file", str(pw)).returncode == 0


def test_a_password_file_others_can_read_is_refused_before_the_database(tmp_path):
    """create-admin's --password-file is held to the same rule as --db-password-file;
    the refusal comes before any connection (the database here does not exist)."""
    pw = tmp_path / "pw"
    pw.write_text("a-good-long-password\n")
    for mode in (0o644, 0o640):
        pw.chmod(mode)
        out = _run("create-admin", "--db", "mysql://x@127.0.0.1:1/nowhere", "--username", "x",
                   "--password-file", str(pw))
        assert out.returncode != 0 and out.stderr.strip().splitlines() == [
            f"tandem: --password-file {pw} is readable by others (chmod 600 it)"]
        assert "a-good-long-password" not in out.stderr + out.stdout
    missing = tmp_path / "no"
    out = _run("create-admin", "--db", "mysql://x@127.0.0.1:1/nowhere", "--password-file", str(missing))
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"tandem: --password-file {missing}: No such file or directory"]


def test_job_fails_with_534_when_the_host_is_gone(procs, mariadb, database):
    host = SimHostProc(procs, op_seconds=0.05)
    server = MgmtProc(procs, mariadb, database, host, "mgmt-h", host_retry=1.0)
    admin = create_admin(procs, mariadb, database)
    api = Api(server.endpoint, admin["apikey"], admin["secretkey"])
    vm = api("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL, templateid=TEMPLATE)
    assert api.wait_job(vm["jobid"])["jobstatus"] == 1
    host.proc.kill()
    host.proc.wait(10)
    result = api.wait_job(api("stopVirtualMachine", id=vm["id"])["jobid"], timeout=30)
    assert result["jobstatus"] == 2 and result["jobresultcode"] == 534
    assert "unavailable" in result["jobresult"]["errortext"]
    assert api("listVirtualMachines", id=vm["id"])["virtualmachine"][0]["state"] == "Error"
