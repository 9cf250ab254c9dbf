"""Use adbatch as a library: send events you build in code, read results as they come.

python examples/library.py          # runs against the embedded mock
"""

from __future__ import annotations

import anyio

import engine


async def main() -> None:
    events = [
        {
            "id": f"home-{i}",
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"v{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
        for i in range(5)
    ] + [
        {
            "id": "search-1",
            "criteo-partner-id": 12345,
            "retailer-visitor-id": "v9",
            "event-type": "viewSearchResult",
            "page-id": "viewSearchResult_API_desktop",
            "keywords": "running shoes",
        },
        {"id": "broken", "event-type": "viewItem"},  # invalid: becomes an error result
    ]
    config = engine.Config(mock=True, concurrency=4, ordered=True)
    async for result in engine.deliver(events, config):
        if result.ok:
            # result.json(): the body parsed (result.body: its bytes, as the record has them).
            ads = len(result.json()["placements"])
            print(f"{result.id}: {result.status} in {result.latency_ms:.1f} ms, {ads} placements")
        else:
            print(f"{result.id}: failed: {result.error}")

    # A whole batch, file to file, returning the summary:
    summary = await engine.run(
        engine.Config(inputs=("examples/pageviews.jsonl",), output="/dev/null", mock=True)
    )
    print(summary.line())


if __name__ == "__main__":
    anyio.run(main)
