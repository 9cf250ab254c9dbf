"""Concatenate objects on the store's side, never leaving an incomplete upload behind.

Rules:
- S3 (s3fs): one multipart upload whose parts are UploadPartCopy of the pieces, in
  order, copied concurrently. s3fs's own `merge` does the same but does not abort the
  upload when a copy or the completion fails, and S3 keeps (and bills) the copied parts
  of an incomplete upload until it is aborted; here a failure aborts it, then raises.
- Another store with a `merge` (gcsfs: compose, which leaves nothing half-done) uses it.
- The caller falls back to streaming the pieces when this raises.
- A process killed during a join (kill -9) cannot abort its upload: `abort_pending`, run
  when an output is opened (fresh or --resume, and `adbatch merge`'s, files/urlmerge.py)
  and before each join, aborts the pending uploads of the output's own key and of its
  temporary names (`KEY.tmp-*`), and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


def can_merge(fs: AbstractFileSystem) -> bool:
    return hasattr(fs, "merge")


def abort_pending(fs: AbstractFileSystem, path: str) -> int:
    """Abort the incomplete multipart uploads left at `path` (and its `.tmp-*` names) by a
    process that died mid-join; returns how many. Nothing to do on a store without them."""
    if not (hasattr(fs, "abort_mpu") and hasattr(fs, "call_s3")):
        return 0
    bucket, key, _ = fs.split_path(path)
    aborted = 0
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key, **markers)
        for upload in page.get("Uploads", []):
            name = upload["Key"]
            if name == key or name.startswith(f"{key}.tmp-"):
                fs.abort_mpu(bucket, name, upload["UploadId"])
                aborted += 1
        if not page.get("IsTruncated"):
            return aborted
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


def merge(fs: AbstractFileSystem, path: str, sources: list[str]) -> None:
    """Write the object at `path` as `sources` concatenated, on the store's side."""
    if not (hasattr(fs, "abort_mpu") and hasattr(fs, "_call_s3")):
        fs.merge(path, sources)
        return
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    try:
        copied = sync(fs.loop, _copy_parts, fs, bucket, key, upload, sources)
        parts = [
            {"PartNumber": i + 1, "ETag": out["CopyPartResult"]["ETag"]}
            for i, out in enumerate(copied)
        ]
        fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload,
                   MultipartUpload={"Parts": parts})  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):
            fs.abort_mpu(bucket, key, upload)
        raise
    finally:
        fs.invalidate_cache(path)


async def _copy_parts(
    fs: Any, bucket: str, key: str, upload: str, sources: list[str]
) -> list[dict[str, Any]]:
    copies = [
        fs._call_s3(
            "upload_part_copy",
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            CopySource=source,
            PartNumber=i + 1,
        )
        for i, source in enumerate(sources)
    ]
    return list(await asyncio.gather(*copies))
