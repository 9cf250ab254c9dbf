"""Criteo-shaped response bodies (pure: no I/O, no clock, no randomness).

Rules:
- A delivery body is a function of the request's query pairs only, through a hash
  of the *sorted* pairs: the same query gives byte-identical bodies, different
  queries give bodies a test can tell apart.
- ``viewItem`` / ``viewBasket`` / ``addToCart`` ... echo the first ``item`` as the
  first product's ``ProductId``; a given ``page-uid`` is echoed back.
- Bodies are built once per distinct query (bounded LRU), serialised by orjson.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

__all__ = [
    "UNAUTHORIZED",
    "delivery_body",
    "error_body",
    "token_body",
    "token_error_body",
]

UNAUTHORIZED = b'{"Status Message":"Unauthorized"}'

_BEACON_HOST = "//b.us5.us.criteo.com/rm"
_PLACEMENTS = ("InGrid", "Carousel", "TopOfSearch", "Banner")
_FORMATS = ("sponsored_products", "sponsored_products", "FS", "showcase")
_BRANDS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark")
_NOUNS = ("Jeans", "Espresso Beans", "Headphones", "Sneakers", "Desk Lamp", "Tea Set")
_BODY_CACHE_SIZE = 4096


def error_body(messages: Sequence[str]) -> bytes:
    return orjson.dumps({"status": "Error", "messages": list(messages)})


def token_body(access_token: str, expires_in: float) -> bytes:
    # 900.0 goes out as 900, like Criteo; a fractional lifetime stays fractional.
    lifetime: float | int = int(expires_in) if float(expires_in).is_integer() else expires_in
    return orjson.dumps(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime}
    )


def token_error_body(error: str, description: str | None = None) -> bytes:
    body = {"error": error}
    if description is not None:
        body["error_description"] = description
    return orjson.dumps(body)


def _beacon(tag: str, kind: str) -> str:
    return f"{_BEACON_HOST}?rm_e={tag}&ev={kind}"


def _price(seed: int) -> str:
    return f"{5 + seed % 195}.{seed % 100:02d}"


def _product(digest: bytes, slot: int, tag: str, product_id: str | None) -> dict[str, Any]:
    b = digest[slot % len(digest)]
    c = digest[(slot * 7 + 3) % len(digest)]
    pid = product_id or f"sku-{digest[slot : slot + 4].hex()}{slot}"
    brand = _BRANDS[b % len(_BRANDS)]
    name = f"{brand} {_NOUNS[c % len(_NOUNS)]}"
    price = _price(b * 31 + c)
    ptag = f"{tag}{slot:02d}"
    return {
        "ProductId": pid,
        "ParentSKU": f"parent-{pid}",
        "ProductName": name,
        "Image": f"https://cdn.example-retailer.com/img/{pid}.jpg",
        "Price": price,
        "ComparePrice": _price(b * 31 + c + 700) if c % 3 == 0 else "",
        "Rating": f"{1 + c % 5}.{b % 10}",
        "ProductPage": f"https://www.example-retailer.com/p/{pid}",
        "RenderingAttributes": orjson.dumps(
            {"brand": brand, "badge": "Sponsored", "inStock": b % 5 != 0}
        ).decode(),
        "OnLoadBeacon": _beacon(ptag, "load"),
        "OnViewBeacon": _beacon(ptag, "view"),
        "OnClickBeacon": _beacon(ptag, "click"),
        "OnBasketChangeBeacon": _beacon(ptag, "basket") if b % 4 else "",
        "OnWishlistBeacon": _beacon(ptag, "wishlist") if c % 4 else "",
    }


@lru_cache(maxsize=_BODY_CACHE_SIZE)
def delivery_body(pairs: tuple[tuple[str, str], ...]) -> bytes:
    """The 200 body for a valid request whose decoded query pairs are ``pairs``."""
    h = hashlib.blake2b(digest_size=32)
    for name, value in sorted(pairs):
        h.update(name.encode())
        h.update(b"\x00")
        h.update(value.encode())
        h.update(b"\x01")
    digest = h.digest()
    tag = digest[:8].hex()
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    page_id = first.get("page-id", "")
    page_uid = first.get("page-uid") or str(uuid.UUID(bytes=digest[:16]))
    item = first.get("item", "").split("|")[0] or None

    placements: list[dict[str, list[dict[str, Any]]]] = []
    slot = 0
    for p in range(1 + digest[8] % 2):
        name = _PLACEMENTS[(digest[9] + p) % len(_PLACEMENTS)]
        products = []
        for _ in range(1 + digest[10 + p] % 4):
            products.append(_product(digest, slot, tag, item if slot == 0 else None))
            slot += 1
        ptag = f"{tag}p{p}"
        ad = {
            "format": _FORMATS[digest[12 + p] % len(_FORMATS)],
            "products": products,
            "rendering": {"type": "native", "layout": "grid" if p == 0 else "row"},
            "OnLoadBeacon": _beacon(ptag, "load"),
            "OnViewBeacon": _beacon(ptag, "view") if digest[14 + p] % 3 else "",
        }
        placements.append({f"{page_id}-{name}": [ad]})
    return orjson.dumps(
        {
            "status": "OK",
            "page-uid": page_uid,
            "onLoadBeacon": _beacon(tag, "pageload"),
            "placements": placements,
        }
    )
