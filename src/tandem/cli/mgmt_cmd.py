"""`tandem mgmt ...`: the CloudStack-compatible management server and its
simulated hypervisor host.

The database password is never taken from the command line where `ps` shows it
unless the operator writes it into the URL: prefer `--db-password-file` or the
`TANDEM_DB_PASSWORD` environment variable. No command prints the password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import typer

from tandem.errors import TandemError
from tandem.secretfile import read_private

app = typer.Typer(help="CloudStack-compatible management server and simulated host.", no_args_is_help=True)

DbOpt = typer.Option(..., "--db", help="mysql://USER@HOST:PORT/DATABASE[?ssl-ca=CA_FILE] (password: see"
                     " --db-password-file; ssl-ca: TLS, the server checked against that CA)")
PwFileOpt = typer.Option(None, "--db-password-file", help="file holding the database password")
KeyFileOpt = typer.Option(None, "--key-file", envvar="TANDEM_MGMT_KEY_FILE",
                          help="file whose contents key the encryption of API secret keys in the database"
                               " (in a cluster: the cluster secret file)")


def _key_file(path: Path | None) -> Path:
    """The key file, checked here so a mistake is one clear line, not a traceback."""
    if path is None:
        raise TandemError("--key-file (or TANDEM_MGMT_KEY_FILE): required; it seals the API secret keys"
                          " stored in the database")
    from tandem.mgmt.secretbox import SecretBox
    SecretBox.from_file(path)  # readable and long enough
    return path


def _db_url(db: str, password_file: Path | None):
    from tandem.mgmt.db import DbUrl
    password = None
    if password_file is not None:
        password = read_private(password_file, "--db-password-file").decode()
    elif os.environ.get("TANDEM_DB_PASSWORD"):
        password = os.environ["TANDEM_DB_PASSWORD"]
    return DbUrl.parse(db, password)


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TandemError(f"--listen: expected ADDRESS:PORT, got {value!r}")
    return host, int(port)


def _logging(verbose: bool) -> None:
    """JSON lines on stderr through `tandem.logs` when present, plain lines otherwise."""
    try:
        from tandem.logs import setup_logging
    except ImportError:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    else:
        setup_logging("debug" if verbose else "info")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@app.command("serve")
def serve(db: str = DbOpt, db_password_file: Path = PwFileOpt, key_file: Path = KeyFileOpt,
          listen: str = typer.Option("127.0.0.1:8080", help="ADDRESS:PORT for /client/api"),
          server_id: str = typer.Option(..., "--server-id", help="this server's unique name"),
          simhost: str = typer.Option("http://127.0.0.1:8250", help="URL of the (simulated) host"),
          dead_after: float = typer.Option(3.0, help="seconds without heartbeat before jobs are taken over"),
          db_retry: float = typer.Option(8.0, help="seconds to keep retrying when the database is away"),
          host_retry: float = typer.Option(20.0, help="seconds to keep retrying when the host is away"),
          no_migrate: bool = typer.Option(False, "--no-migrate", help="do not upgrade the schema at start"),
          require_expires: bool = typer.Option(
              False, "--require-expires",
              help="refuse signed requests without an 'expires' (signatureVersion 2 never expires)"),
          max_expires_ahead: float = typer.Option(3600.0, min=1, help="latest 'expires' accepted (s ahead)"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Serve the CloudStack API and execute async jobs."""
    from tandem.mgmt.server import MgmtConfig
    from tandem.mgmt.server import serve as run
    host, port = _listen(listen)
    if not server_id or len(server_id) > 64:
        raise TandemError("--server-id: give a name of 1 to 64 characters")
    config = MgmtConfig(db=_db_url(db, db_password_file), host=host, port=port, server_id=server_id,
                        simhost=simhost, dead_after=dead_after, db_retry_budget=db_retry,
                        host_retry_budget=host_retry, key_file=_key_file(key_file),
                        migrate=not no_migrate, require_expires=require_expires,
                        max_expires_ahead=max_expires_ahead)
    _logging(verbose)
    try:
        asyncio.run(run(config))
    except OSError as e:
        raise TandemError(f"cannot serve on {listen}: {e.strerror}") from None


@app.command("simhost")
def simhost(state_dir: Path = typer.Option(..., "--state-dir", help="directory for state and effect log"),
            listen: str = typer.Option("127.0.0.1:8250", help="ADDRESS:PORT"),
            op_seconds: float = typer.Option(0.5, help="how long each VM operation takes"),
            clock_offset: float = typer.Option(0.0, help="seconds the host's clock runs ahead when"
                                               " it checks request expiry (for tests)"),
            verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a simulated hypervisor host (idempotent operations, effect log)."""
    from tandem.mgmt.simhost import serve as run
    host, port = _listen(listen)
    _logging(verbose)
    try:
        asyncio.run(run(state_dir, host, port, op_seconds, clock_offset))
    except OSError as e:
        raise TandemError(f"cannot serve on {listen}: {e.strerror}") from None


@app.command("migrate")
def migrate_cmd(db: str = DbOpt, db_password_file: Path = PwFileOpt) -> None:
    """Create or upgrade the database schema."""
    from tandem.mgmt.db import Database
    from tandem.mgmt.migrations import LATEST, migrate
    database = Database(_db_url(db, db_password_file), retry_budget=2)
    try:
        applied = _db_call(lambda: migrate(database), database)
    finally:
        database.close()
    typer.echo(f"schema at version {LATEST}" + (f" (applied {applied})" if applied else " (nothing to do)"))


@app.command("create-admin")
def create_admin(db: str = DbOpt, db_password_file: Path = PwFileOpt, key_file: Path = KeyFileOpt,
                 username: str = typer.Option("admin", help="user (and account) name"),
                 password_file: Path = typer.Option(
                     None, help="file with the password, readable by its owner only (else a prompt)"),
                 user: bool = typer.Option(False, "--user", help="create a plain user, not an admin"),
                 json_out: bool = typer.Option(False, "--json")) -> None:
    """Create an admin (or --user) with a password and mint its API keys."""
    from tandem.mgmt import auth
    from tandem.mgmt.db import Database
    from tandem.mgmt.migrations import migrate
    from tandem.mgmt.secretbox import SecretBox
    box = SecretBox.from_file(_key_file(key_file))
    if password_file is not None:
        try:
            password = read_private(password_file, "--password-file").decode()
        except UnicodeDecodeError:
            raise TandemError(f"--password-file {password_file}: not UTF-8 text") from None
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise TandemError("password: use at least 8 characters")
    database = Database(_db_url(db, db_password_file), retry_budget=2)

    def write(cur):
        if auth.find_user_id(cur, username):
            raise TandemError(f"user {username!r} already exists")
        kind = auth.ACCOUNT_USER if user else auth.ACCOUNT_ADMIN
        uid = auth.create_user(cur, username, password, account_type=kind)
        return uid, auth.register_keys(cur, uid, box)

    try:
        _db_call(lambda: migrate(database), database)
        user_id, keys = _db_call(lambda: database.write_sync(write), database)
    finally:
        database.close()
    out = {"username": username, "userid": user_id, "apikey": keys[0], "secretkey": keys[1]}
    if json_out:
        typer.echo(json.dumps(out))
    else:
        for k, v in out.items():
            typer.echo(f"{k}: {v}")


def _db_call(fn, database):
    import pymysql

    from tandem.mgmt.db import DbUnavailable
    try:
        return fn()
    except DbUnavailable as e:  # names the database itself
        raise TandemError(str(e)) from None
    except pymysql.err.MySQLError as e:
        raise TandemError(f"database {database.url.safe()}: {e.args[-1] if e.args else e}") from None


def main() -> None:
    """Run `tandem mgmt` alone (`python -m tandem.cli.mgmt_cmd`), with the same error handling."""
    try:
        app(standalone_mode=False)
    except TandemError as e:
        print(f"tandem: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # usage errors
            print(f"tandem: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
