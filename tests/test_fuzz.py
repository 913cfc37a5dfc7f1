"""A fuzz pass: thousands of mutated JPEG and .npz files (bit flips,
truncations, header edits).  Every outcome is a clean imgnorm error or a
correct read: the same pixels Pillow gives, the same arrays np.load gives."""

from __future__ import annotations

import io
import json
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


N_DOCS = 1500
N_ATTRS = 300


def _mutate_json(text: str, rng) -> str:
    """Text edits that keep the document JSON-looking: numbers, names, brackets and cut-offs."""
    b = list(text)
    kind = rng.integers(0, 5)
    if kind == 0:  # a digit, sign or bracket changed
        for _ in range(rng.integers(1, 4)):
            i = int(rng.integers(0, len(b)))
            b[i] = str(rng.choice(list('0123456789-.e[]{}",:')))
    elif kind == 1:  # a token swapped for another JSON value
        i = int(rng.integers(0, len(b)))
        b[i:i + int(rng.integers(1, 12))] = list(str(rng.choice(["null", "true", "-0", "1e999", "NaN", "[]", "{}",
                                                                   '""', "-1", "1.5", "9" * 400])))
    elif kind == 2:
        b = b[:int(rng.integers(0, len(b)))]
    elif kind == 3:  # a key renamed
        keys = [k for k in ("mean", "std", "sums", "splits", "per_channel", "fit_split", "version", "channels",
                            "sum", "sum_sq", "global", "pixels", "images", "kind", "dtype") if f'"{k}"' in text]
        if not keys:
            return text[::-1]
        k = str(rng.choice(keys))
        return text.replace(f'"{k}"', f'"{k}x"', 1)
    else:  # a value's type changed
        return text.replace(": [", ': "', 1) if rng.integers(0, 2) else text.replace(": {", ": [", 1)
    return "".join(b)


def test_mutated_stats_documents(tmp_path, rng):
    """Every mutated document is either refused with a StatsFileError or applies as a sane Scaler."""
    from imgnorm.errors import StatsFileError
    from imgnorm.stats import parse_stats_document
    from imgnorm.transforms import Scaler

    x = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    base = json.dumps(Scaler("standardize", per_channel=True).fit(x).to_stats())
    outcomes = {"refused": 0, "applied": 0}
    for _ in range(N_DOCS):
        text = _mutate_json(base, rng)
        try:
            doc = parse_stats_document(text, "s.json")
            y = Scaler.from_stats(doc, method="standardize").transform(x, dtype=np.float64)
        except (StatsFileError, ImgnormError):
            outcomes["refused"] += 1
            continue
        assert np.isfinite(y).all()
        outcomes["applied"] += 1
    assert outcomes["refused"] > 0 and outcomes["applied"] > 0, outcomes


def test_mutated_hdf5_attributes_given_to_inspect(tmp_path, rng):
    """inspect on files whose attributes were edited: a one-line imgnorm error or a description."""
    import h5py
    from click.testing import CliRunner

    from imgnorm.cli import cli

    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8))
    good = tmp_path / "good.h5"
    assert CliRunner().invoke(cli, ["standardize", str(tmp_path / "d.npz"), "-o", str(good)]).exit_code == 0
    with h5py.File(good) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    path = tmp_path / "m.h5"
    outcomes = {"refused": 0, "described": 0}
    for i in range(N_ATTRS):
        path.write_bytes(good.read_bytes())
        name = str(rng.choice(sorted(attrs)))
        value = attrs[name]
        others = [np.int64(3), np.float64(np.nan), np.zeros(3), np.bytes_(b"\xff\xfe"), "x" * int(rng.integers(0, 5))]
        new = _mutate_json(value, rng) if isinstance(value, str) and rng.integers(0, 3) else \
            others[int(rng.integers(0, len(others)))]
        with h5py.File(path, "a") as f:
            f.attrs[name] = new
        r = CliRunner().invoke(cli, ["inspect", str(path)])
        assert r.exit_code in (0, 1), (name, new, r.output)
        assert "Traceback" not in r.output and "bug" not in r.output, (name, new, r.output)
        if r.exit_code == 1:
            assert r.output.startswith(f"Error: {path}:") and r.output.count("\n") == 1, r.output
            outcomes["refused"] += 1
        else:
            outcomes["described"] += 1
    assert outcomes["refused"] > 0 and outcomes["described"] > 0, outcomes
