"""Image folders shipped as one archive (.tar.gz, .tgz, .tar): unpacked once into the cache.

The archive is keyed by the sha256 of its bytes, so a changed archive unpacks again and an unchanged
one (wherever it is) is read from `<cache>/archives/<name>-<sha256 prefix>/`. Members are extracted
with tarfile's `data` filter (no absolute paths, no links out of the folder, no device files) into a
temporary sibling folder that is renamed into place only when every member is out: a crash, a full
disk or a truncated archive never leaves a folder that looks complete.

Example:
    >>> is_archive(Path("cifar10/train.tar.gz")), is_archive(Path("photos"))
    (True, False)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from ..errors import PrunetuneError
from ..files import atomic_dir, cache_root

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """Whether `path` is named like an archive this module unpacks (the name only; not read)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpacked(archive: Path) -> Path:
    """The folder `archive` unpacks to, unpacking it into the cache the first time.

    A damaged archive (truncated, not a tar file, corrupt gzip, a member the `data` filter refuses)
    raises PrunetuneError naming it; a full disk stays an OSError (a fault of the machine)."""
    try:
        digest = _sha256(archive)
    except FileNotFoundError:
        raise PrunetuneError(f"data.path: {archive} not found; set data.path to an image folder or archive") from None
    final = cache_root() / "archives" / f"{archive_stem(archive)}-{digest[:16]}"
    if final.is_dir():
        return final
    tmp = atomic_dir(final)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, tarfile.FilterError):
            raise PrunetuneError(f"{archive}: refused to unpack member {e.tarinfo.name!r} (a path or link outside the "
                                 "folder, or a device file); repack the archive without it") from None
        # gzip.BadGzipFile is an OSError but a damaged file, not a fault of the machine.
        if isinstance(e, (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)):
            detail = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
            raise PrunetuneError(f"{archive}: truncated or not a tar archive ({detail}); re-download it, or unpack "
                                 "it and set data.path to the folder") from None
        raise
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():  # not another process that unpacked the same archive meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def content_root(folder: Path) -> Path:
    """`folder`, or the folder inside it that holds the data when it only wraps one (an archive of
    `train/<class>/...` or of `cifar10/{train,test}/...`)."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return folder
        folder = entries[0]
