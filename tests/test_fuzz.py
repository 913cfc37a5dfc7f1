"""A fuzz pass: thousands of mutated JPEG and .npz files (bit flips,
truncations, header edits).  Every outcome is a clean imgnorm error or a
correct read: the same pixels Pillow gives, the same arrays np.load gives."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from imgnorm.decode import decode
from imgnorm.errors import ImgnormError, ImageError
from imgnorm.sources import open_source

N_JPEG = 1500
N_NPZ = 1500


def mutate(data: bytes, rng, header: int) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # bit flips anywhere
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(0, len(b))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncation
        b = b[: rng.integers(0, len(b))]
    elif kind == 2:  # header edits
        for _ in range(rng.integers(1, 5)):
            b[rng.integers(0, min(header, len(b)))] = int(rng.integers(0, 256))
    else:  # a run of bytes replaced
        i = int(rng.integers(0, len(b)))
        b[i:i + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return bytes(b)


def pillow_rgb(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        return None


def test_mutated_jpegs(tmp_path):
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    base = buf.getvalue()
    outcomes = {"error": 0, "read": 0}
    path = tmp_path / "m.jpg"
    for _ in range(N_JPEG):
        path.write_bytes(mutate(base, rng, header=200))
        try:
            got = decode(str(path))
        except ImageError as e:
            assert e.path == str(path)
            outcomes["error"] += 1
            continue
        want = pillow_rgb(path)
        assert want is not None, "imgnorm read a file Pillow cannot"
        np.testing.assert_array_equal(got, want)
        outcomes["read"] += 1
    assert outcomes["error"] > 100 and outcomes["read"] > 100, outcomes  # both paths exercised


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_mutated_npz(tmp_path, compression):
    rng = np.random.default_rng(11)
    arrays = {"x_train": rng.integers(0, 256, (12, 5, 5), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 12, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (4, 5, 5), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 4, dtype=np.uint8)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for k, v in arrays.items():
            b = io.BytesIO()
            np.save(b, v)
            z.writestr(k + ".npy", b.getvalue())
    base = buf.getvalue()
    path = tmp_path / "m.npz"
    outcomes = {"error": 0, "read": 0}
    for _ in range(N_NPZ // 2):
        path.write_bytes(mutate(base, rng, header=len(base)))
        try:
            src = open_source(path)
            got = {f"x_{n}": np.concatenate([b.images for b in s.batches(5)]) for n, s in src.splits.items()}
            got.update({f"y_{n}": s.labels for n, s in src.splits.items() if s.labels is not None})
        except ImgnormError as e:
            assert str(path) in str(e)
            outcomes["error"] += 1
            continue
        with np.load(path, allow_pickle=False) as want:  # must read the same, CRC-checked
            for k, v in got.items():
                w = want[k]
                np.testing.assert_array_equal(v, w[..., None] if w.ndim == 3 else w)
        outcomes["read"] += 1
    assert outcomes["error"] > 50 and outcomes["read"] > 10, outcomes
