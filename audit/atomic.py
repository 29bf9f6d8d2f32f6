"""Atomic file writes: every file the suite produces appears whole or not at all.

A writer fills a temporary file in the destination directory (same filesystem, so the final
``os.replace`` is atomic on POSIX and Windows) and renames it only after the data is flushed.
A crash leaves at most a ``.tmp-*`` file behind, which readers never pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``.

    Use this for libraries that insist on writing to a path themselves (pyarrow, Pillow).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    dest: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``dest`` when the block exits cleanly."""
    if "b" in mode:
        encoding = None
    with atomic_path(dest) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(dest, "wb") as fh:
        fh.write(data)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_open(dest, "w") as fh:
        fh.write(text)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
