"""Time the one redactor (engine/core/secrets.py) on 1 KB JSON bodies.

    python benchmarks/redact.py                # this work tree's redactor
    python benchmarks/redact.py --compare REV  # and REV's, interleaved, same bodies

Bodies: Criteo-shaped JSON of ~1 KB with no secret in it, plain, with `%XX` escapes (beacon
URLs), with `\\/` escapes (a server that escapes slashes), and one that echoes the token
JSON-escaped; and benchmarks/run.py's 2.7 KB delivery answer, as it is and with %XX-escaped
beacon URLs. Secrets: a JWT-like token and a client secret with its Basic form (an older
redactor without `basic=` hunts the two alone), then the token alone (a static token or an
OAuth run's issued one). Prints a markdown table of microseconds per call (best of
`--rounds` interleaved rounds).
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


def _token_only(module: ModuleType) -> Any:
    return module.Secrets((TOKEN,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="also time REV's redactor")
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
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
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import fixed_body

    delivery = fixed_body()
    bodies["2.7 KB delivery answer (run.py), no secret"] = delivery
    bodies["2.7 KB delivery answer, %XX beacons"] = delivery.replace(
        b"&ev=", b"&u=https%3A%2F%2Fshop.example%2Fp%3Fa%3D1&ev="
    )
    names = list(versions)
    print("| body | secrets | " + " | ".join(f"{n} (us)" for n in names) + " |")
    print("| --- | --- |" + " --- |" * len(names))
    for who, make in (("token + client", _secrets), ("token only", _token_only)):
        for label, data in bodies.items():
            calls = {}
            for name in names:
                secrets = make(versions[name])
                secrets.redact_bytes(data)  # compile what is compiled once
                calls[name] = secrets.redact_bytes
            if len({calls[n](data) for n in names}) > 1:
                print(f"OUTPUT DIFFERS: {label}, {who}", file=sys.stderr)
            best = dict.fromkeys(names, float("inf"))
            for _ in range(args.rounds):  # interleaved: the versions share the machine alike
                for name in names:
                    call = calls[name]
                    took = timeit.timeit(lambda: call(data), number=args.number)  # noqa: B023
                    best[name] = min(best[name], took)
            cells = " | ".join(f"{best[n] / args.number * 1e6:.2f}" for n in names)
            print(f"| {label} ({len(data)} B) | {who} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
