"""Tiny datasets made in tmp_path: JPEG folders and .npz files."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image


def write_jpeg(path, rng, size=(12, 10), mode="RGB", quality=90):
    """A small noisy image; returns the path."""
    w, h = size
    chans = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    a = rng.integers(0, 256, (h, w, chans), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(a[:, :, 0] if chans == 1 else a, mode).save(path, quality=quality)
    return str(path)


def png16(path, a):
    """A 16-bit PNG of ``a`` (h, w, 1..4: gray, gray+alpha, RGB, RGBA) written by hand:
    Pillow cannot write 16-bit colour, and the reader under test must not write its own input."""
    import struct
    import zlib

    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    pathlib.Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                                   + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def photo_folder(tmp_path, rng):
    """train/ (3 classes, 4+3+5 images) and val/ (3 classes, 2 each), mixed sizes, 16x16 mostly."""
    root = tmp_path / "photos"
    counts = {"train": {"cat": 4, "dog": 3, "owl": 5}, "val": {"cat": 2, "dog": 2, "owl": 2}}
    for split, classes in counts.items():
        for cls, n in classes.items():
            for i in range(n):
                size = (16, 16) if (i + len(cls)) % 3 else (20, 14)
                write_jpeg(root / split / cls / f"{cls}_{i:02d}.jpg", rng, size=size)
    return root


@pytest.fixture
def same_size_folder(tmp_path, rng):
    """train/ and test/ with two classes each; every image 16x12."""
    root = tmp_path / "same"
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("a", "b"):
            for i in range(n):
                write_jpeg(root / split / cls / f"{i}.jpg", rng, size=(16, 12))
    return root


def mnist_like(rng, n_train=50, n_test=20, h=8, w=8):
    return {
        "x_train": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


@pytest.fixture
def mnist_npz(tmp_path, rng):
    """An uncompressed .npz in the Keras mnist.npz layout; returns (path, arrays)."""
    arrays = mnist_like(rng)
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    return path, arrays


@pytest.fixture
def mnist_npz_compressed(tmp_path, rng):
    arrays = mnist_like(rng)
    path = tmp_path / "mnist_c.npz"
    np.savez_compressed(path, **arrays)
    return path, arrays


# ------------------------------------------------ running as another user

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_unprivileged() -> list[str]:
    """The command prefix that runs a program as an unprivileged user.

    Root reads folders of mode 000 and writes into read-only ones, so the
    permission cases need a real user: as root, ``setpriv`` to nobody; as
    any other user, nothing.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's privileges")
    return NOBODY


@pytest.fixture(params=["self", "nobody"])
def user(request):
    """Run a case as the test's own user and, when that is root, as nobody too."""
    if request.param == "nobody" and os.geteuid() != 0:
        pytest.skip("not root: the test's own user is already unprivileged")
    return request.param


def imgnorm_cmd(*args, user: str = "self") -> list[str]:
    prefix = as_unprivileged() if user == "nobody" else []
    return [*prefix, sys.executable, "-m", "imgnorm", *map(str, args)]


def run_imgnorm(*args, user: str = "self", timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """The real command in a subprocess (as ``user``); stdout and stderr as text."""
    kw.setdefault("cwd", "/")
    return subprocess.run(imgnorm_cmd(*args, user=user), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def world_tmp():
    """A temporary folder every user can read and write (pytest's tmp_path is
    private to the user running the tests)."""
    d = tempfile.mkdtemp(prefix="imgnorm-test-")
    os.chmod(d, 0o777)
    yield pathlib.Path(d)
    for top, dirs, _ in os.walk(d):  # folders a test made unreadable
        for name in dirs:
            try:
                os.chmod(os.path.join(top, name), 0o755)
            except OSError:
                pass
    shutil.rmtree(d, ignore_errors=True)


def open_to_all(*paths) -> None:
    """Make files and folders made by the tests readable and writable by every user."""
    for p in paths:
        for top, dirs, files in os.walk(p):
            os.chmod(top, 0o777)
            for f in files:
                os.chmod(os.path.join(top, f), 0o666)
