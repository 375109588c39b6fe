"""Files at the bottom of the package: atomic writes (files and folders) and the cache folder.

Every file prunetune writes appears whole or not at all: it is written under a temporary name
beside its final one and renamed into place (`replaced`, `atomic_write`, `staged_folder`). Errors
about the temporary name are re-aimed at the final one, which is what the user asked for.
Imports nothing of prunetune but its errors.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(p, b"hi"); p.read_bytes()
    b'hi'
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import safetensors.torch
import torch
from safetensors import SafetensorError

from .errors import PrunetuneError, RuntimeFault


def cache_root() -> Path:
    """Where trained dense models, tokenised text and importance gradients are cached:
    $PRUNETUNE_CACHE or ~/.cache/prunetune."""
    return Path(os.environ.get("PRUNETUNE_CACHE") or Path.home() / ".cache" / "prunetune")


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_beside(final: Path, suffix: str = "") -> Path:
    """An empty temporary file in `final`'s folder (so os.replace is atomic), with umask permissions."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=suffix, dir=final.parent)
    except OSError as e:  # e.g. no write permission: name the file asked for, not the temporary name
        raise OSError(e.errno, e.strerror, str(final)) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600 files; the result should look like any other
    return Path(name)


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write; renamed to `path` when the block succeeds, removed
    when it fails. An OSError about the temporary file (or about no file: a full disk) names `path`."""
    tmp = temp_beside(path, ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and getattr(e, "filename", None) in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either the old or the complete new file
    (flushed and fsynced: it survives a crash of the machine too)."""
    with replaced(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(path.parent)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file; its write errors (disk full, file size limit) arrive as SafetensorError,
    made an OSError naming `path` again so the command line reports them as such."""
    try:
        safetensors.torch.save_file(tensors, str(path))
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        raise RuntimeFault(f"{path}: cannot write the weights ({str(e).splitlines()[0][:160]})") from None


def cache_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Store a cache entry atomically (readers never see a half-written file); a failed write (no
    permission, disk full) only costs recomputing it next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced(path) as tmp:
            safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    except (OSError, SafetensorError):
        pass


def atomic_dir(final: Path) -> Path:
    """A temporary sibling folder; `commit_dir` renames it to `final` when everything is written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:  # e.g. no write permission: name the folder asked for, not the temporary name
        raise OSError(e.errno, e.strerror, str(final)) from None


def as_final(e: BaseException, tmp: Path, final: Path) -> BaseException:
    """An OSError about `tmp` (or a file inside it) re-aimed at `final`, where that file was going:
    the temporary name means nothing to the user and is deleted by then. Other errors are returned as they are."""
    name = getattr(e, "filename", None)
    if not isinstance(e, OSError) or not name:
        return e
    try:
        rel = Path(name).relative_to(tmp)
    except ValueError:
        return e
    return OSError(e.errno, e.strerror, str(final / rel))


def commit_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise PrunetuneError(f"{final}: already exists; choose another --out or remove it")
    os.replace(tmp, final)


@contextlib.contextmanager
def staged_folder(final: Path, on_abort: Callable[[], None] | None = None) -> Iterator[Path]:
    """Write into a temporary sibling folder, renamed to `final` only when the block succeeds.

    On any failure (or Ctrl-C) `on_abort` runs and the temporary folder is removed, so nothing
    that looks complete is left behind.
    """
    tmp = atomic_dir(final)
    try:
        yield tmp
        commit_dir(tmp, final)
    except BaseException as e:
        if on_abort is not None:
            on_abort()
        shutil.rmtree(tmp, ignore_errors=True)
        renamed = as_final(e, tmp, final)
        if renamed is not e:
            raise renamed from None
        raise
