"""Whether a path is a regular file on a local disk: what the feed may read in the event
loop's own thread (runtime/feeds.py), where a read never waits on anything but the page
cache or the disk.

Rules:
- Regular files only (not a FIFO, a terminal, /dev/stdin, a directory).
- The filesystem is told by the file's device in /proc/self/mountinfo (Linux), by its
  type: the local disk and memory types below. A network or FUSE filesystem (nfs, cifs,
  sshfs, 9p, ceph...), an unknown type, or no /proc (macOS, Windows) is not local: the
  caller keeps its worker thread.
"""

from __future__ import annotations

import functools
import os
import stat

_LOCAL_TYPES = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "zfs",
        "f2fs",
        "jfs",
        "reiserfs",
        "bcachefs",
        "tmpfs",
        "ramfs",
        "overlay",
        "squashfs",
        "erofs",
        "vfat",
        "exfat",
        "ntfs3",
        "hfsplus",
        "iso9660",
    }
)


def is_local_file(path: str) -> bool:
    """True for a regular file on a local filesystem (the module's rules)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    kind = _filesystems().get((os.major(info.st_dev), os.minor(info.st_dev)))
    return kind in _LOCAL_TYPES


@functools.cache
def _filesystems() -> dict[tuple[int, int], str]:
    """(major, minor) of each mount -> its filesystem type; {} without /proc."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    kinds: dict[tuple[int, int], str] = {}
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 3 or not rest:
            continue
        major, _, minor = parts[2].partition(":")
        if major.isdigit() and minor.isdigit():
            kinds.setdefault((int(major), int(minor)), rest.split()[0])
    return kinds
