"""A throwaway CA and a server certificate for 127.0.0.1, for the HTTPS rows.

`make_certs(directory)` writes `ca.pem`, `server.pem` and `server.key` (P-256: fast to
make and to handshake) with the `cryptography` package when it is installed, else with
the `openssl` command; None when neither is there (the HTTPS rows are then skipped with
a note). The CA carries basicConstraints and keyUsage and the server certificate its
key identifiers, so Python's strict verification (3.13's default) accepts the chain.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    made_by: str


def make_certs(d: Path) -> Certs | None:
    d.mkdir(parents=True, exist_ok=True)
    try:
        return _with_cryptography(d)
    except ImportError:
        pass
    if shutil.which("openssl"):
        return _with_openssl(d)
    return None


def make_certs_apart(d: Path) -> Certs | None:
    """`make_certs` in a child process. Importing `cryptography` here would add ~14 MiB to
    the benchmark's own process, and every client it starts would show them in its peak
    RSS (a child's ru_maxrss counts its time as a fork of this process, before exec)."""
    done = subprocess.run([sys.executable, __file__, str(d)], capture_output=True, text=True)
    made_by = done.stdout.strip()
    if done.returncode != 0 or not made_by:
        return None
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key", made_by)


def _with_cryptography(d: Path) -> Certs:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adbatch benchmark CA")])
    ca_usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key", "cryptography")


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _with_openssl(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2",
        "-subj", "/CN=adbatch benchmark CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", d / "server.key", "-out", d / "server.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (d / "ext.cnf").write_text(
        f"{_SAN}\nbasicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", d / "ext.cnf", "-out", d / "server.pem",
    )  # fmt: skip
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key", "openssl")


if __name__ == "__main__":
    made = make_certs(Path(sys.argv[1]))
    print(made.made_by if made is not None else "")
