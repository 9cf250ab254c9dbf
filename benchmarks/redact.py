"""Time the one redactor (engine/core/secrets.py) on 1 KB JSON bodies.

    python benchmarks/redact.py                # this work tree's redactor
    python benchmarks/redact.py --compare REV  # and REV's, interleaved, same bodies

Bodies: Criteo-shaped JSON of ~1 KB with no secret in it, plain, with `%XX` escapes (beacon
URLs), with `\\/` escapes (a server that escapes slashes), and one that echoes the token
JSON-escaped. Secrets: a JWT-like token and a client secret with its Basic form (an older
redactor without `basic=` hunts the two alone). Prints a markdown table of microseconds per
call (best of 5 rounds).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtb2NrLWNsaWVudCIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl"
SECRET = "s3cr+t/=&é-client-secret"
ITEM = (
    '{"ProductName":"Running shoe %d","Price":"12.50","Image":"//img.example.com/p/%d.jpg",'
    '"ClickBeacon":"//b.criteo.com/rm?rm_e=abc%s&ev=4"}'
)


def _body(extra: str = "", echo: str = "") -> bytes:
    head = '{"status":"OK","page-uid":"9eb908f5-fb03-bfb5",' + echo + '"placements":[{"p-Top":['
    items: list[str] = []
    while len(head) + sum(map(len, items)) < 1000:
        items.append(ITEM % (len(items), len(items), extra))
    return (head + ",".join(items) + "]}]}").encode()


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _secrets(module: ModuleType) -> Any:
    try:
        return module.Secrets((TOKEN, SECRET), basic=(("my-client", SECRET),))
    except TypeError:  # a redactor from before `basic=`
        return module.Secrets((TOKEN, SECRET))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="also time REV's redactor")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()

    versions = {"work tree": _load(ROOT / "engine/core/secrets.py", "secrets_now")}
    if args.compare:
        text = subprocess.run(
            ["git", "show", f"{args.compare}:engine/core/secrets.py"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(text)
        versions[args.compare] = _load(Path(f.name), "secrets_then")
    echoed = "".join(f"\\u{ord(c):04x}" for c in TOKEN)
    mixed = "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(TOKEN))
    bodies = {
        "no backslash, no %, no secret": _body(),
        "%XX escapes, no secret": _body("%3D%2F"),
        "\\/ escapes, no secret": _body().replace(b"/", b"\\/"),
        "the token echoed as \\uXXXX": _body(echo=f'"echo":"{echoed}",'),
        "the token echoed, mixed spelling": _body(echo=f'"echo":"{mixed}",'),
    }
    names = list(versions)
    print("| 1 KB body | " + " | ".join(f"{n} (us)" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for label, data in bodies.items():
        cells = []
        for name in names:
            secrets = _secrets(versions[name])
            secrets.redact_bytes(data)  # compile what is compiled once
            call = secrets.redact_bytes
            best = min(timeit.repeat(lambda: call(data), number=args.number, repeat=5))  # noqa: B023
            cells.append(f"{best / args.number * 1e6:.2f}")
        print(f"| {label} ({len(data)} B) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
