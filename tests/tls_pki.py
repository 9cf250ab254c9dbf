"""A throwaway PKI made with the `openssl` command, for the TLS tests.

`make_pki(directory)` writes, once, everything the TLS tests need (P-256 keys: fast):

- `ca.pem` / `ca.key`: the test CA;
- `good.pem`: a server certificate from that CA for 127.0.0.1 and localhost;
- `expired.pem`: the same names, from that CA, valid only in January 2020;
- `wrong-host.pem`: from that CA, for other.example only;
- `self-signed.pem`: 127.0.0.1 and localhost, signed by its own key;
- `other-ca.pem`: 127.0.0.1 and localhost, from another CA (`other-root.pem`);
- `client.pem` / `client.key`: a client certificate from the test CA (mutual TLS);
- `stranger.pem` / `stranger.key`: a client certificate from the other CA.

Every server certificate shares `server.key`. Paths come back as a `Pki`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_LOCAL = "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
_CA_CONF = """
[ ca ]
default_ca = test_ca
[ test_ca ]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
unique_subject = no
[ any ]
commonName = supplied
"""


@dataclass(frozen=True, slots=True)
class Pki:
    dir: Path
    ca: Path
    server_key: Path
    good: Path
    expired: Path
    wrong_host: Path
    self_signed: Path
    other_ca: Path
    other_root: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def openssl() -> str | None:
    return shutil.which("openssl")


def _run(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _key(path: Path) -> Path:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _root(d: Path, name: str, subject: str) -> tuple[Path, Path]:
    key = _key(d / f"{name}.key")
    cert = d / f"{name}.pem"
    _run(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3650", "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _csr(d: Path, key: Path, subject: str) -> Path:
    csr = d / "request.csr"
    _run("req", "-new", "-key", key, "-out", csr, "-subj", subject)
    return csr


def _sign(d: Path, ca: tuple[Path, Path], key: Path, out: str, ext: str) -> Path:
    extfile = d / "ext.cnf"
    extfile.write_text(ext)
    cert = d / out
    _run(
        "x509", "-req", "-in", _csr(d, key, "/CN=adbatch test"), "-CA", ca[0], "-CAkey", ca[1],
        "-CAcreateserial", "-days", "365", "-extfile", extfile, "-out", cert,
    )  # fmt: skip
    return cert


def _expired(d: Path, ca: tuple[Path, Path], key: Path) -> Path:
    """`openssl ca` sets dates in the past (`x509 -req` only counts days from now)."""
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    conf = d / "ca.cnf"
    conf.write_text(_CA_CONF.format(dir=d))
    extfile = d / "ext.cnf"
    extfile.write_text(_LOCAL)
    cert = d / "expired.pem"
    _run(
        "ca", "-batch", "-notext", "-config", conf, "-cert", ca[0], "-keyfile", ca[1],
        "-in", _csr(d, key, "/CN=adbatch test"), "-out", cert, "-extfile", extfile,
        "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
    )  # fmt: skip
    return cert


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = _root(d, "ca", "/CN=adbatch test CA")
    other = _root(d, "other-root", "/CN=another test CA")
    server_key = _key(d / "server.key")
    self_signed = d / "self-signed.pem"
    _run(
        "req", "-x509", "-new", "-key", server_key, "-out", self_signed, "-days", "365",
        "-subj", "/CN=localhost", "-addext", _LOCAL.strip(),
    )  # fmt: skip
    client_key = _key(d / "client.key")
    stranger_key = _key(d / "stranger.key")
    client_ext = "extendedKeyUsage=clientAuth\n"
    return Pki(
        dir=d,
        ca=ca[0],
        server_key=server_key,
        good=_sign(d, ca, server_key, "good.pem", _LOCAL),
        expired=_expired(d, ca, server_key),
        wrong_host=_sign(d, ca, server_key, "wrong-host.pem", "subjectAltName=DNS:other.example\n"),
        self_signed=self_signed,
        other_ca=_sign(d, other, server_key, "other-ca.pem", _LOCAL),
        other_root=other[0],
        client_cert=_sign(d, ca, client_key, "client.pem", client_ext),
        client_key=client_key,
        stranger_cert=_sign(d, other, stranger_key, "stranger.pem", client_ext),
        stranger_key=stranger_key,
    )
