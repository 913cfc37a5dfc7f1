"""Writing output files safely: a temporary file beside the target, renamed into
place only when complete, removed on any error, Ctrl-C or SIGTERM."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from .errors import OutputError

TMP_SUFFIX = ".imgnorm-tmp"


def check_output(path: str | os.PathLike, force: bool = False) -> str:
    """Fail early, before any work, if ``path`` cannot or must not be written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise OutputError(f"{path} is a folder; give a file name")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} exists; pass --force to replace it")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; move it to ``path`` on success.

    On any exception (including KeyboardInterrupt and SystemExit) the
    temporary file is removed and an existing ``path`` is left untouched.
    """
    path = check_output(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=folder)
    except OSError as e:
        raise OutputError(f"{path}: cannot create a file in {folder} ({e.strerror})") from None
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            text = str(e)
            if e.strerror and e.strerror.startswith(("not enough disk space", "over the file size limit")):
                what = e.strerror  # from the up-front space reservation: it says how much is needed
            elif e.errno == errno.ENOSPC or "No space left" in text:
                what = "disk full"
            elif e.errno == errno.EFBIG or "File too large" in text:
                what = "file too large for this file system or limit"
            else:
                what = e.strerror or text.splitlines()[0] if text else type(e).__name__
            raise OutputError(f"{path}: cannot write ({what}); nothing was written") from None
        raise


def write_json(path: str | os.PathLike, doc: dict, force: bool = False) -> None:
    """Write a JSON document atomically."""
    with atomic_output(path, force) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


def reserve(path: str, nbytes: int) -> None:
    """Allocate disk blocks for the whole output before HDF5 writes any data.

    A full disk then fails here, at once and cleanly, instead of inside HDF5
    after hours of work: HDF5 (1.14 and 2.0 alike) can crash the process at
    exit once a write has failed with dirty chunks in its cache.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG):
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            why = ("not enough disk space" if e.errno == errno.ENOSPC else "over the file size limit")
            raise OSError(e.errno, f"{why}: the output needs up to {_human(nbytes)}, "
                                   f"{_human(free)} free") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: go on unreserved
            raise
    finally:
        os.close(fd)


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
