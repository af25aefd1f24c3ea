"""Content hashes of image files, re-read only when a file may have changed.

The feature cache keys features by the SHA-256 of an image's bytes. Reading every byte on every run is
slow for large datasets, so `file_hashes.json` remembers each file's digest with its stat fields
(size, mtime_ns, ctime_ns, inode) and a file is hashed again when any of them differs. Size and mtime
alone are not enough: a rewrite that keeps the size and restores the mtime (`os.utime`, `cp -p`,
`rsync -t`) still changes ctime (POSIX: the inode change time), which no user call can set back,
and two files swapped by renames (an archive extraction) swap inodes.

A digest is remembered only when the file's ctime is older than the hashing by more than `RACY_NS`:
file system timestamps advance in coarse ticks, so a rewrite in the same tick as the hashing could keep
every stat field (git's "racily clean" entries). Such files are simply hashed again next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinotune.atomic import write_text

log = logging.getLogger(__name__)
TABLE_VERSION = 2
RACY_NS = 2_000_000_000  # 2 s: covers coarse kernel ticks and FAT's 2 s mtime resolution


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_fields(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 5
        and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:4])
        and isinstance(entry[4], str)
        and len(entry[4]) == 64
    )


class ContentHashes:
    """SHA-256 digests of files, with the stat table in `table` deciding which files to re-read."""

    def __init__(self, table: Path) -> None:
        self.table = Path(table)
        self.hashed = 0  # files read in full by the last `digests` call (tests and logs use it)

    def _load(self) -> dict[str, list]:
        """The stored table; anything unreadable or of the wrong shape is dropped with one warning."""
        if not self.table.exists():
            return {}
        try:
            data = json.loads(self.table.read_text())
            files = data["files"] if isinstance(data, dict) and data.get("version") == TABLE_VERSION else None
            if not isinstance(files, dict) or not all(_valid_entry(v) for v in files.values()):
                raise ValueError(f"not a version-{TABLE_VERSION} file-hash table")
            return files
        except (OSError, ValueError, UnicodeDecodeError, KeyError) as err:
            log.warning(
                "feature cache: %s is unreadable (%s); rebuilding it by hashing every image again", self.table, err
            )
            return {}

    def digests(self, paths: Sequence[Path]) -> list[str]:
        """The content digest of each path, reading only files whose stat fields changed."""
        known = self._load()
        result: list[str] = []
        changed, self.hashed = False, 0
        try:
            for path in paths:
                key = str(path.resolve())
                before = path.stat()
                entry = known.get(key)
                if entry is not None and entry[:4] == _stat_fields(before):
                    result.append(entry[4])
                    continue
                started = time.time_ns()
                digest = file_hash(path)
                self.hashed += 1
                result.append(digest)
                settled = before.st_ctime_ns < started - RACY_NS and _stat_fields(path.stat()) == _stat_fields(before)
                if settled:
                    known[key] = [*_stat_fields(before), digest]
                    changed = True
                elif known.pop(key, None) is not None:
                    changed = True
        finally:  # an interrupted run keeps the digests it computed
            if changed:
                write_text(self.table, json.dumps({"version": TABLE_VERSION, "files": known}))
        return result
