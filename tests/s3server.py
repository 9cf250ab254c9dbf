"""An S3 API on 127.0.0.1 for the tests: moto's standalone server, in this process.

`s3_server()` starts one (once per test session, on a free port); the `s3` fixture in
conftest.py resets its state for each test and points the standard AWS variables at it
(AWS_ENDPOINT_URL, fake keys, us-east-1, no instance metadata), so that in-process code
and CLI subprocesses alike reach it the way a user reaches S3: through s3fs and botocore,
with nothing patched. Nothing may reach a real AWS host: the endpoint is asserted to be
127.0.0.1. Skips (with the reason) when moto[server] or s3fs is not installed.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientSession, web

#: What the fixture sets for each test (and the CLI subprocesses it starts inherit).
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Variables that could send a client elsewhere (a profile, another endpoint): unset.
UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3:
    """The running server: its endpoint and a few helpers over a plain boto3 client."""

    endpoint: str

    def client(self) -> Any:
        import boto3

        host = urlsplit(self.endpoint).hostname
        assert host == "127.0.0.1", f"refusing to talk to S3 at {host}"
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name`; returns `s3://name`."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def put(self, url: str, data: bytes) -> str:
        """Upload `data` as the object `s3://bucket/key` (the bucket must exist)."""
        bucket, key = _split(url)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return url

    def get(self, url: str) -> bytes:
        bucket, key = _split(url)
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, url: str) -> list[str]:
        """The keys under `s3://bucket/prefix`, sorted."""
        bucket, prefix = _split(url)
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    assert parts.scheme == "s3", url
    return parts.netloc, parts.path.lstrip("/")


def s3_server() -> Iterator[S3]:
    """Start moto's server on 127.0.0.1 (skip when moto[server] or s3fs is missing)."""
    pytest.importorskip("s3fs", reason="s3fs is not installed: pip install '.[s3]'")
    server_module = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed: pip install 'moto[server]>=5'"
    )
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def point_at(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the standard AWS variables at `s3` for one test."""
    assert urlsplit(s3.endpoint).hostname == "127.0.0.1"
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/adbatch-tests")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/adbatch-tests")


async def forward_to_moto(s3: S3, request: web.Request, body: bytes) -> web.StreamResponse:
    """`request` (its `body` read) sent on to moto, and moto's answer as it came: the
    core of a proxy a test puts in front of the store to fail chosen requests."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    async with (
        ClientSession(auto_decompress=False) as session,
        session.request(
            request.method, s3.endpoint + request.path_qs, headers=headers, data=body,
            allow_redirects=False,
        ) as answer,
    ):  # fmt: skip
        data = await answer.read()
        drop = {"transfer-encoding", "connection", "content-length", "content-encoding"}
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in drop}
        if request.method == "HEAD":
            kept["Content-Length"] = answer.headers.get("Content-Length", "0")
            response = web.StreamResponse(status=answer.status, headers=kept)
            response.content_length = int(kept["Content-Length"])
            await response.prepare(request)
            return response
        return web.Response(status=answer.status, body=data, headers=kept)
