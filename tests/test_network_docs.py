"""docs/network.md's commands, and README's proxy line, run as written.

Every command of the `sh` blocks of docs/network.md is in `RUN` (the last test fails
when one is added to the page without a test here), and each test runs its commands
as the page shows them, in a directory holding the files they name (`events.jsonl`,
`corp-ca.pem`, `me.pem`, `me.key`): `adbatch ...` is `engine.cli.main.main` in this
process, `ADBATCH_ENDPOINT` and `ADBATCH_TOKEN` aim it at nginx (tests/nginx_tls.py, its
HTTP/2 listeners too), and the page's proxy hosts (`proxy.corp.example:3128`, ...) are
replaced by a tinyproxy on 127.0.0.1. The trusted CAs come from `--cacert` where the
command has it, else from `SSL_CERT_FILE` (the system store honours it), except where
the page expects the system store to refuse the server.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import exactly_once, read_records
from nginx_tls import NginxTls, nginx, nginx_tls
from test_proxy_net import PROXY_SIDE, running_tinyproxy
from tls_pki import Pki, make_pki, openssl

from engine.cli.main import main
from engine.net.tls import client_context

ROOT = Path(__file__).resolve().parent.parent
NETWORK = (ROOT / "docs" / "network.md").read_text()
README = (ROOT / "README.md").read_text()

pytestmark = [
    pytest.mark.slow,  # nginx + tinyproxy; uvloop on 3.13 once hit EBUSY at loop close here
    pytest.mark.skipif(openssl() is None, reason="openssl is not installed"),
    pytest.mark.skipif(nginx() is None, reason="nginx is not installed"),
]
NEEDS_TINYPROXY = pytest.mark.skipif(
    shutil.which("tinyproxy") is None, reason="tinyproxy is not installed"
)
_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def sh_commands(markdown: str) -> list[str]:
    """The commands of the ```sh blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


#: Every command of docs/network.md, by the test that runs it.
RUN: dict[str, str] = {
    "adbatch run --cacert corp-ca.pem events.jsonl -o ads.jsonl": "private_ca",
    "adbatch run --cacert corp-ca.pem --client-cert me.pem --client-key me.key events.jsonl"
    " -o ads.jsonl": "mutual_tls",
    "adbatch run events.jsonl -o ads.jsonl": "resume_with_cacert, proxy_variables",
    "adbatch run --cacert corp-ca.pem --resume events.jsonl -o ads.jsonl": "resume_with_cacert",
    "adbatch run --header 'X-Gateway: staging' --header 'X-Team: ads' events.jsonl -o ads.jsonl":
    "headers",
    "adbatch run --dry-run --header 'X-Gateway: staging' events.jsonl": "headers",
    "export HTTPS_PROXY=http://proxy.corp.example:3128 NO_PROXY=localhost,.corp.example":
    "proxy_variables",
    "adbatch run --proxy http://proxy2.corp.example:8080 events.jsonl -o ads.jsonl": "proxy_option",
    "adbatch run --no-proxy events.jsonl -o ads.jsonl": "proxy_option",
    "pip install 'adbatch[http2]'": "http2",
    "adbatch run --http2 events.jsonl -o ads.jsonl": "http2",
}  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxTls]:
    with nginx_tls(pki, tmp_path_factory.mktemp("nginx")) as running:
        yield running


@pytest.fixture
def user(
    pki: Pki, server: NginxTls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A working directory as the page's user has it; the environment aimed at nginx."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("ADBATCH_TOKEN", "t")
    monkeypatch.setenv("ADBATCH_ENDPOINT", server.url("good"))
    monkeypatch.chdir(tmp_path)
    shutil.copy(pki.ca, "corp-ca.pem")
    shutil.copy(pki.client_cert, "me.pem")
    shutil.copy(pki.client_key, "me.key")
    rows = [
        f'{{"id":"e{i}","criteo-partner-id":1,"retailer-visitor-id":"v{i}",'
        f'"event-type":"viewHome","page-id":"viewHome_API_desktop"}}'
        for i in range(30)
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(rows) + "\n")
    client_context.cache_clear()  # SSL_CERT_FILE is read when a context is made
    yield tmp_path
    client_context.cache_clear()


def _own(directory: Path) -> Path:
    directory.mkdir()
    return directory


def adbatch(command: str, **replace: str) -> int:
    """Run the page's `command` (it must be there as written), with `replace`'s swaps."""
    assert command in RUN, command
    for old, new in replace.items():
        command = command.replace(old, new)
    words = shlex.split(command)
    assert words[0] == "adbatch"
    return main(words[1:])


def export(command: str, monkeypatch: pytest.MonkeyPatch, **replace: str) -> None:
    assert command in RUN, command
    for old, new in replace.items():
        command = command.replace(old, new)
    for assignment in shlex.split(command)[1:]:
        name, _, value = assignment.partition("=")
        monkeypatch.setenv(name, value)


def _calls(server: NginxTls, before: int, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(calls := server.calls()) < before + n and time.monotonic() < deadline:
        time.sleep(0.01)
    return calls[before:]


def _all_ok(path: str = "ads.jsonl", n: int = 30) -> list[dict[str, Any]]:
    records = read_records(Path(path))
    assert len(records) == n
    assert all(r["ok"] and r["status"] == 200 for r in records), records[0]
    return records


# -- TLS ---------------------------------------------------------------------------------


def test_private_ca(user: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert adbatch("adbatch run --cacert corp-ca.pem events.jsonl -o ads.jsonl") == 0
    _all_ok()


def test_mutual_tls(
    user: Path,
    server: NginxTls,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ADBATCH_ENDPOINT", server.url("mutual"))
    before = len(server.calls())
    command = (
        "adbatch run --cacert corp-ca.pem --client-cert me.pem --client-key me.key "
        "events.jsonl -o ads.jsonl"
    )
    assert adbatch(command) == 0, capsys.readouterr().err
    _all_ok()
    assert {c["client"] for c in _calls(server, before, 30)} == {"CN=adbatch test"}


def test_resume_with_cacert(
    user: Path, server: NginxTls, capsys: pytest.CaptureFixture[str]
) -> None:
    """The system store does not know the test CA: exit 3 at the first tls record, the
    stop line as the page shows it; --cacert and --resume send the rest."""
    assert adbatch("adbatch run events.jsonl -o ads.jsonl") == 3
    err = capsys.readouterr().err
    [stopped] = [line for line in err.splitlines() if line.startswith("adbatch: stopped:")]
    shown = next(line for line in NETWORK.splitlines() if line.startswith("adbatch: stopped: TLS"))
    where = f"127.0.0.1:{server.ports['good']}"
    expected = shown.replace("gw.example:443", where).replace(
        "https://gw.example/delivery/retailmedia", server.url("good")
    )
    assert stopped == expected
    assert {r["error_kind"] for r in read_records(Path("ads.jsonl"))} == {"tls"}
    command = "adbatch run --cacert corp-ca.pem --resume events.jsonl -o ads.jsonl"
    assert adbatch(command) == 0, capsys.readouterr().err
    exactly_once(_all_ok(), 30)


# -- --header ----------------------------------------------------------------------------


def test_headers(
    user: Path,
    server: NginxTls,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    before = len(server.calls())
    command = (
        "adbatch run --header 'X-Gateway: staging' --header 'X-Team: ads' events.jsonl -o ads.jsonl"
    )
    assert adbatch(command) == 0, capfd.readouterr().err  # capfd: the records go to fd 1
    _all_ok()
    assert {(c["gateway"], c["team"]) for c in _calls(server, before, 30)} == {("staging", "ads")}

    capfd.readouterr()
    assert adbatch("adbatch run --dry-run --header 'X-Gateway: staging' events.jsonl") == 0
    shown = [line for line in capfd.readouterr().out.splitlines() if line]
    assert len(shown) == 30
    assert all('"X-Gateway":"staging"' in line for line in shown)
    assert all('"Authorization":"Bearer [redacted]"' in line for line in shown)
    assert len(server.calls()) == before + 30  # nothing sent


# -- proxies -----------------------------------------------------------------------------


@NEEDS_TINYPROXY
def test_proxy_variables(
    user: Path,
    server: NginxTls,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The page's export (NO_PROXY as written: localhost is a name, 127.0.0.1 is not
    covered), then README's one-line form."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    port = server.ports["good"]
    with running_tinyproxy(_own(user / "proxy"), connect_port=port) as proxy:
        export(
            "export HTTPS_PROXY=http://proxy.corp.example:3128 NO_PROXY=localhost,.corp.example",
            monkeypatch,
            **{"http://proxy.corp.example:3128": proxy.url()},
        )
        before = len(server.calls())
        assert adbatch("adbatch run events.jsonl -o ads.jsonl") == 0, capsys.readouterr().err
        _all_ok()
        assert {c["remote"] for c in _calls(server, before, 30)} == {PROXY_SIDE}
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("NO_PROXY")

        line = "HTTPS_PROXY=http://proxy.corp.example:3128 adbatch run events.jsonl -o ads.jsonl"
        assert line in README
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        before = len(server.calls())
        assert adbatch("adbatch run events.jsonl -o ads.jsonl") == 0, capsys.readouterr().err
        _all_ok()
        assert {c["remote"] for c in _calls(server, before, 30)} == {PROXY_SIDE}
        assert set(proxy.requests()) == {f"CONNECT 127.0.0.1:{port}"}


@NEEDS_TINYPROXY
def test_proxy_option(
    user: Path,
    server: NginxTls,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nobody there
    with running_tinyproxy(_own(user / "proxy"), connect_port=server.ports["good"]) as proxy:
        before = len(server.calls())
        command = "adbatch run --proxy http://proxy2.corp.example:8080 events.jsonl -o ads.jsonl"
        assert adbatch(command, **{"http://proxy2.corp.example:8080": proxy.url()}) == 0
        _all_ok()
        assert {c["remote"] for c in _calls(server, before, 30)} == {PROXY_SIDE}

        before = len(server.calls())
        assert adbatch("adbatch run --no-proxy events.jsonl -o ads.jsonl") == 0
        _all_ok()
        assert {c["remote"] for c in _calls(server, before, 30)} == {"127.0.0.1"}


# -- HTTP/2 ------------------------------------------------------------------------------


def test_http2(
    user: Path,
    server: NginxTls,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pip install 'adbatch[http2]'` installs the extra pyproject.toml declares (httpx
    with h2); with it, `--http2` speaks HTTP/2 to nginx."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("httpx[http2]") for d in extras["http2"])
    pytest.importorskip("h2", reason="the http2 extra is not installed")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    before = len(server.calls())
    assert adbatch("adbatch run --http2 events.jsonl -o ads.jsonl") == 0
    _all_ok()
    assert {c["protocol"] for c in _calls(server, before, 30)} == {"HTTP/2.0"}


def test_every_command_of_the_page_is_run_here() -> None:
    assert set(sh_commands(NETWORK)) == set(RUN)
    for command, tests in RUN.items():
        for name in tests.split(", "):
            assert f"test_{name}" in globals(), (command, name)


def test_the_commands_read_from_the_page() -> None:
    """`sh_commands` itself: a continuation joined, a comment dropped."""
    page = "```sh\nadbatch run --a x \\\n    y.jsonl   # why\n# alone\n```\n"
    assert sh_commands(page) == ["adbatch run --a x y.jsonl"]
