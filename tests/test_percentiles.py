"""Exact percentiles from histograms: every reported percentile, median, IQR and
MAD equal to numpy's on the stacked pixels, bit for bit, whatever the batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgnorm.stats import PERCENTILES, RunningStats, robust_summary

Q = list(PERCENTILES) + [0, 100, 0.1, 2.5, 33.333333333333336, 50.000001, 66.6, 97.5, 99.99, 1e-9]


def numpy_summary(x: np.ndarray, q) -> dict:
    return {"percentiles": [float(v) for v in np.percentile(x, q)], "median": float(np.median(x)),
            "iqr": float(np.percentile(x, 75) - np.percentile(x, 25)),
            "mad": float(np.median(np.abs(x - np.median(x))))}


def data(rng, dtype, n, kind):
    info = np.iinfo(dtype)
    if kind == "uniform":
        return rng.integers(info.min, int(info.max) + 1, n).astype(dtype)
    if kind == "narrow":  # a few levels, many ties: the interpolation matters
        return rng.integers(0, 4, n).astype(dtype) + np.array(info.max // 3, dtype)
    if kind == "two":
        return np.where(rng.random(n) < 0.3, info.min, info.max).astype(dtype)
    return (np.clip(rng.normal(0, 1, n) * info.max / 8 + (info.max + int(info.min)) / 2, info.min, info.max)
            .astype(dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 40000])
@pytest.mark.parametrize("kind", ["uniform", "narrow", "two", "normal"])
def test_summary_equals_numpy_bit_for_bit(rng, dtype, n, kind):
    x = data(rng, dtype, n, kind)
    s = RunningStats(1, dtype).update(x.reshape(1, n, 1, 1))
    got = robust_summary(s.hist_[0], np.dtype(dtype), Q)
    want = numpy_summary(x, Q)
    assert got == want  # exact equality of every float, not approximate


def test_bool_pixels(rng):
    x = rng.random(101) < 0.4
    s = RunningStats(1, np.bool_).update(x.reshape(1, 101, 1, 1))
    assert robust_summary(s.hist_[0], np.bool_, Q) == numpy_summary(x.astype(np.uint8), Q)


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
def test_per_channel_and_global_for_any_batching_and_merge_order(rng, batch):
    x = rng.integers(0, 256, (60, 9, 7, 3), dtype=np.uint8)
    parts = [RunningStats(3, np.uint8).update(x[i:i + batch]) for i in range(0, 60, batch)]
    whole = RunningStats(3, np.uint8)
    for p in reversed(parts):  # any merge order
        whole.merge(p)
    block = whole.to_dict(Q)["percentiles"]
    flat = x.reshape(-1, 3)
    assert block["global"] == numpy_summary(flat.ravel(), Q)
    assert block["per_channel"] == [numpy_summary(flat[:, c], Q) for c in range(3)]


def test_float_pixels_have_no_percentiles_and_say_why(rng):
    s = RunningStats(2, np.float32).update(rng.random((3, 4, 4, 2)).astype(np.float32))
    block = s.to_dict()["percentiles"]
    assert block["global"] is None and block["per_channel"] is None
    assert "float pixels" in block["reason"]


def test_sixteen_bit_histograms_stay_small_in_documents(rng):
    x = (rng.integers(0, 4096, (20, 64, 64, 3)) * 16).astype(np.uint16)  # a 12-bit sensor
    doc = RunningStats(3, np.uint16).update(x).to_dict()
    text = json.dumps(doc["hist"])
    assert len(text) < 3 * 4096 * 16  # the non-zero bins only: under 200 KB for three channels
    back = RunningStats.from_dict(json.loads(json.dumps(doc)))
    np.testing.assert_array_equal(back.hist_, RunningStats(3, np.uint16).update(x).hist_)
