"""The cluster's own certificate authorities: etcd's (mutual TLS) and the database's.

Why: the leader key, the lease keepalives (the heartbeat every failover hangs on)
and the "peer Outdated" records live in etcd. An etcd that answers anyone on the
public network lets any host there take the leader key or delete it. tandem's
etcd therefore takes only clients and peers with a certificate of the cluster's
CA (`--client-cert-auth`, `--peer-client-cert-auth`), and every tandem process
presents its host's certificate (what Patroni users configure by hand with
`cacert`/`cert`/`key`).

Layout of a PKI directory (`[etcd] tls_dir`) where it is made: ``ca.crt``,
``ca.key`` (needed only to issue more certificates: it stays there, never on a
host) and ``HOST.crt``/``HOST.key`` for each node and the witness. Each host's
tls_dir holds ``ca.crt`` and its own pair only (`HostTls`); a host with another's
key could pose as it. One certificate per host serves both as etcd server (its
IP addresses and 127.0.0.1 in the SAN) and as client. ECDSA P-256: a handshake
costs about a millisecond, which matters when a client re-dials after a
partition within the 0.5 s operation bound.

The database has a CA of its own (``db-ca.crt``/``db-ca.key``) and a server-only
certificate per data node (``HOST-db.crt``/``HOST-db.key``): MariaDB's TLS for the
management servers and other clients over the DB VIP (see `init_db` for why not
etcd's). Data nodes also hold ``db-ca.crt``: their management servers are clients.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tandem.errors import TandemError
from tandem.secretfile import write_private

VALIDITY = datetime.timedelta(days=3650)


class PkiError(TandemError):
    pass


@dataclass(frozen=True)
class HostTls:
    """The files one host presents to etcd (and checks etcd against)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, tls_dir: Path, host: str) -> HostTls:
        return cls(tls_dir / "ca.crt", tls_dir / f"{host}.crt", tls_dir / f"{host}.key")

    @classmethod
    def db_of(cls, tls_dir: Path, host: str) -> HostTls:
        """MariaDB's files on `host` (the database CA's, see `init_db`)."""
        return cls(tls_dir / "db-ca.crt", tls_dir / f"{host}-db.crt", tls_dir / f"{host}-db.key")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, key, certificate) as PEM bytes, as gRPC takes them."""
        try:
            return self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        except OSError as e:
            raise PkiError(f"etcd TLS: cannot read {e.filename} ({e.strerror}); create the PKI with"
                           " `tandem pki init --config FILE`") from None

    def etcd_server_args(self) -> list[str]:
        """etcd flags: serve clients and peers over TLS, and only to holders of a
        certificate of this CA."""
        files = ["--cert-file", str(self.cert), "--key-file", str(self.key),
                 "--trusted-ca-file", str(self.ca), "--client-cert-auth"]
        peer = ["--peer-cert-file", str(self.cert), "--peer-key-file", str(self.key),
                "--peer-trusted-ca-file", str(self.ca), "--peer-client-cert-auth"]
        return files + peer

    def etcdctl_args(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.cert}", f"--key={self.key}"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tandem"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(tls_dir: Path, cluster: str, prefix: str = "") -> None:
    """A new CA in `tls_dir` (refused if one is there: its certificates would all
    stop being trusted). `prefix` "db-": the database's own CA (see `init`)."""
    crt, key_file = tls_dir / f"{prefix}ca.crt", tls_dir / f"{prefix}ca.key"
    if crt.exists() or key_file.exists():
        raise PkiError(f"{tls_dir}: a CA exists already ({crt.name}/{key_file.name}); remove the"
                       " directory to start over, or issue more host certificates from it")
    tls_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(f"tandem {'database' if prefix else 'etcd'} CA of {cluster}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            # key identifiers: Python 3.13's strict X.509 checking wants them
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key_file, _key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(tls_dir: Path, host: str, addresses: Iterable[str], db: bool = False) -> HostTls:
    """A certificate for `host`, valid for its `addresses` and 127.0.0.1, as etcd
    server and as client, signed by the CA in `tls_dir`. `db`: MariaDB's server
    certificate instead, signed by the database CA (server use only)."""
    files = HostTls.db_of(tls_dir, host) if db else HostTls.of(tls_dir, host)
    ca_key_file = files.ca.with_suffix(".key")
    try:
        ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    except OSError as e:
        raise PkiError(f"{tls_dir}: no CA to sign with ({e.strerror}: {e.filename});"
                       f" `tandem pki {'db' if db else 'init'}` creates one") from None
    except ValueError as e:
        raise PkiError(f"{tls_dir}: the CA files are not PEM ({e})") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca_key_file}: not an ECDSA key")
    ips = sorted({ipaddress.ip_address(a) for a in [*addresses, "127.0.0.1"]}, key=str)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName("localhost"),
                                                        *(x509.IPAddress(ip) for ip in ips)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] if db
                else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def init(tls_dir: Path, cluster: str, hosts: dict[str, list[str]],
         db_hosts: dict[str, list[str]] | None = None) -> list[HostTls]:
    """A CA and one certificate per host (name -> its addresses); with `db_hosts`,
    the database's PKI too (`init_db`)."""
    create_ca(tls_dir, cluster)
    issued = [issue(tls_dir, host, addrs) for host, addrs in hosts.items()]
    if db_hosts:
        init_db(tls_dir, cluster, db_hosts)
    return issued


def init_db(tls_dir: Path, cluster: str, hosts: dict[str, list[str]]) -> list[HostTls]:
    """The database's own CA and a server certificate per data node.

    Not etcd's: mariadbd runs as its own user and must read its key, and a user who
    took the server over must get nothing etcd accepts (etcd has no access control:
    its client key is the leader key). The database's clients trust this CA alone,
    so no etcd certificate (the witness's, a tool's) can pose as the database."""
    create_ca(tls_dir, cluster, prefix="db-")
    return [issue(tls_dir, host, addrs, db=True) for host, addrs in hosts.items()]
