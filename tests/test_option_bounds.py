"""Option values that used to end in a traceback, exit 70 or a fork storm: each is one
line, exit 2, before anything is sent (README: exit codes), and quotes no secret.

- `--workers` is 1..MAX_WORKERS; a limit on open files its pipes would break is exit 2
  naming --workers; a worker that cannot start (EMFILE) stops the ones started.
- A proxy URL, client id or client secret that is not UTF-8 text (a raw byte of argv or
  the environment, `%FF` in a proxy's password) is refused where it is read.
- `--max-line-bytes` is 64..1 GiB (2**63 - 1 overflowed the readers).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from web_app import serving

from engine.cli.main import main
from engine.config import MAX_LINE_BYTES, MAX_WORKERS
from engine.core.errors import ConfigError
from engine.core.proxies import parse_proxy_url
from engine.multiproc.driver import auto_workers

#: httpx and h2 (the http2 extra): --http2 is refused without them, first
_HTTP2 = all(importlib.util.find_spec(name) is not None for name in ("httpx", "h2"))

ROOT = Path(__file__).resolve().parent.parent
EVENTS = str(ROOT / "examples" / "pageviews.jsonl")
#: The password of the proxy URLs below; never in a message.
SECRET = "ssw0rdXYZ"


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run the CLI: exit 2, one line on stderr holding `words`, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


# -- --workers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [str(MAX_WORKERS + 1), "99999999999999999999999999"])
def test_workers_past_the_bound_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "out.jsonl"
    argv = ["run", "--mock", "--workers", value, EVENTS, "-o", str(out)]
    _refused(capsys, argv, f"--workers must be a whole number from 1 to {MAX_WORKERS}", value)
    assert not out.exists()


def test_workers_past_the_bound_in_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("workers = 100000000000000000000\n")
    argv = ["run", "--mock", "--config", str(toml), EVENTS, "-o", str(tmp_path / "o.jsonl")]
    _refused(capsys, argv, f"from 1 to {MAX_WORKERS}")


def test_auto_is_within_the_bound() -> None:
    assert 1 <= auto_workers() <= MAX_WORKERS


#: The CLI under RLIMIT_NOFILE (soft = hard = argv[1]), with argv[2] more files open.
LIMITED = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "held = [os.open(os.devnull, os.O_RDONLY) for _ in range(int(sys.argv[2]))]\n"
    "from engine.cli.main import main\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def _run_limited(limit: int, held: int, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), str(held), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _alive(marker: str) -> list[str]:
    """Processes whose command line holds `marker` (the run's and its workers')."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_workers_beyond_the_open_files_limit_are_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = _run_limited(
        120, 0, "run", "--mock", "--workers", "80", "-c", "1", EVENTS, "-o", str(out)
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert "--workers 80 needs about" in err, err
    assert "the limit is 120" in err, err
    assert not out.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_worker_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    """The limit leaves room for 20 workers' pipes by the count, but 150 files the
    process already holds use it up: the fork of some worker fails with EMFILE."""
    out = tmp_path / "out.jsonl"
    argv = ["run", "--mock", "--workers", "20", "-c", "1", EVENTS, "-o", str(out)]
    done = _run_limited(200, 150, *argv)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert "--workers 20: could not start worker" in err, err
    assert "Too many open files" in err, err
    assert not out.exists() or out.read_bytes() == b""
    assert _alive(str(out)) == []  # no worker outlives the run


# -- text that is not UTF-8 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param(f"http://u:p\udcff{SECRET}@127.0.0.1:3128", "is not UTF-8 text", id="raw"),
        pytest.param(f"http://u\udcff:{SECRET}@127.0.0.1:3128", "is not UTF-8 text", id="user"),
        pytest.param("http://pr\udcffoxy:3128", "is not UTF-8 text", id="host"),
        pytest.param(f"http://u:p%FF{SECRET}@127.0.0.1:3128", "once percent-decoded", id="ff"),
        pytest.param(f"http://u:%ED%A0%80{SECRET}@h:1", "once percent-decoded", id="surrogate"),
    ],
)
def test_a_proxy_url_that_is_not_utf8_is_refused(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_proxy_url(url, source="HTTPS_PROXY")
    message = str(raised.value)
    assert message.startswith("HTTPS_PROXY: ")
    assert words in message
    assert SECRET not in message
    assert "\n" not in message


def test_a_utf8_proxy_password_is_kept() -> None:
    proxy = parse_proxy_url("http://u:p%E2%82%ACss@h:1", source="--proxy")
    assert proxy.password == "p€ss"
    assert proxy.authorization == "Basic " + base64.b64encode("u:p€ss".encode()).decode()


@pytest.mark.parametrize(
    "client",
    [
        "http1",
        "session",
        pytest.param(
            "http2",
            marks=pytest.mark.skipif(not _HTTP2, reason="pip install 'adbatch[http2]'"),
        ),
    ],
)
def test_proxy_bytes_are_exit_2_before_anything_is_sent(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    out = tmp_path / "out.jsonl"
    # Nothing listens on either port: a refusal before any call is the only way to 2.
    argv = ["run", "--http-client", client, "--token", "abcdefghijk", "--endpoint"]
    argv += ["https://127.0.0.1:9/delivery/retailmedia", EVENTS, "-o", str(out)]
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://u:p\udcff{SECRET}@127.0.0.1:9")
    err = _refused(capsys, argv, "HTTPS_PROXY: the proxy URL is not UTF-8 text")
    assert SECRET not in err
    monkeypatch.delenv("HTTPS_PROXY")
    argv += ["--proxy", f"http://u:p%FF{SECRET}@127.0.0.1:9"]
    err = _refused(capsys, argv, "--proxy: the proxy URL's user or password is not UTF-8")
    assert SECRET not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("env", "argv", "words"),
    [
        pytest.param(
            {"ADBATCH_CLIENT_ID": "mock-client", "ADBATCH_CLIENT_SECRET": f"sec\udce9{SECRET}"},
            [],
            "the client secret (--client-secret-file, ADBATCH_CLIENT_SECRET) is not UTF-8 text",
            id="env-secret",
        ),
        pytest.param(
            {"ADBATCH_CLIENT_SECRET": SECRET},
            ["--client-id", "cl\udce9ent"],
            "the client id (--client-id, ADBATCH_CLIENT_ID) is not UTF-8 text",
            id="argv-id",
        ),
        pytest.param(
            {"ADBATCH_CLIENT_ID": "cl\udce9ent", "ADBATCH_CLIENT_SECRET": SECRET},
            [],
            "the client id (--client-id, ADBATCH_CLIENT_ID) is not UTF-8 text",
            id="env-id",
        ),
    ],
)
def test_client_credentials_that_are_not_utf8_are_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: list[str],
    words: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out.jsonl"
    urls = ["--endpoint", "http://127.0.0.1:9/d", "--token-url", "http://127.0.0.1:9/t"]
    err = _refused(capsys, ["run", *argv, *urls, EVENTS, "-o", str(out)], words)
    assert SECRET not in err
    assert not out.exists()


def test_a_secret_file_that_is_not_utf8_says_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"sec\xe9" + SECRET.encode())
    argv = ["run", "--client-id", "c", "--client-secret-file", str(secret), "--endpoint"]
    argv += ["http://127.0.0.1:9/d", "--token-url", "http://127.0.0.1:9/t", EVENTS]
    err = _refused(capsys, argv, f"client secret file {secret} is not UTF-8 text")
    assert SECRET not in err


@pytest.mark.anyio
async def test_session_sends_a_utf8_proxy_password(tmp_path: Path) -> None:
    """aiohttp encodes a proxy URL's credentials as latin-1: `€` raised on every call
    (70), and `ä` went out as one byte where http1 sends UTF-8."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Proxy-Authorization", ""))
        return web.json_response({"status": "OK"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", proxy)
    events = tmp_path / "in.jsonl"
    events.write_text(
        '{"id": "pv-1", "event-type": "viewHome", "page-id": "viewHome_API_desktop", '
        '"criteo-partner-id": 1, "retailer-visitor-id": "v-1"}\n'
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    async with serving(app) as base:
        argv = [sys.executable, "-m", "engine", "run", "--http-client", "session"]
        argv += ["--token", "mock-token", "--proxy", base.replace("//", "//u:p%E2%82%AC%C3%A4@")]
        argv += ["--endpoint", "http://127.0.0.2:9/delivery/retailmedia", str(events)]
        argv += ["-o", str(tmp_path / "out.jsonl")]
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        )
    assert done.returncode == 0, done.stderr
    assert seen == ["Basic " + base64.b64encode("u:p€ä".encode()).decode()]


# -- --max-line-bytes -----------------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**63 - 1), str(2**63), str(MAX_LINE_BYTES + 1)])
def test_max_line_bytes_past_the_bound_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "out.jsonl"
    argv = ["run", "--mock", "--max-line-bytes", value, EVENTS, "-o", str(out)]
    _refused(capsys, argv, f"--max-line-bytes must be 64 to {MAX_LINE_BYTES} (1 GiB), got {value}")
    assert not out.exists()
    toml = tmp_path / "c.toml"
    toml.write_text(f"max-line-bytes = {value}\n")
    _refused(capsys, ["run", "--mock", "--config", str(toml), EVENTS, "-o", str(out)], "1 GiB")
    assert not out.exists()


def test_max_line_bytes_at_the_bound_runs(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", "--mock", "--max-line-bytes", "1GiB", EVENTS, "-o", str(out)]) == 0
    assert len(out.read_bytes().splitlines()) == 40
