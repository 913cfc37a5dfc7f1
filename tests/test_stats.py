"""RunningStats: streaming equals numpy on the stacked array, exactly where it can."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from imgnorm.errors import StatsFileError
from imgnorm.stats import RunningStats, document_bytes, merge_documents, read_stats_document, stats_document

REL = 1e-12


def stream(x, batch_size):
    s = RunningStats(x.shape[-1], x.dtype)
    for i in range(0, len(x), batch_size):
        s.update(x[i:i + batch_size])
    return s


def exact_mean_var(values):
    """Mean and population variance as exact fractions of the float values."""
    vals = [Fraction(float(v)) for v in np.asarray(values).ravel()]
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / n
    return float(mean), float(var)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 40, 45])
def test_streaming_equals_numpy(rng, dtype, batch_size):
    if np.dtype(dtype).kind == "f":
        x = rng.normal(100, 30, (40, 5, 6, 3)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, int(info.max) + 1, (40, 5, 6, 3)).astype(dtype)
    s = stream(x, batch_size)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(s.mean_, flat.mean(axis=0), rtol=REL)
    np.testing.assert_allclose(s.var_, flat.var(axis=0), rtol=REL)
    np.testing.assert_allclose(s.std_, flat.std(axis=0), rtol=REL)
    np.testing.assert_array_equal(s.min_, flat.min(axis=0))
    np.testing.assert_array_equal(s.max_, flat.max(axis=0))
    g = s.global_stats()
    assert g["count"] == flat.size
    assert g["mean"] == pytest.approx(flat.mean(), rel=REL)
    assert g["std"] == pytest.approx(flat.std(), rel=REL)
    assert (g["min"], g["max"]) == (flat.min(), flat.max())
    assert s.images_ == 40 and s.count_ == 40 * 30 and s.shape_ == (5, 6, 3)


def test_integer_results_are_identical_for_any_batching(rng):
    x = rng.integers(0, 256, (30, 7, 5, 3), dtype=np.uint8)
    docs = [stream(x, b).to_dict() for b in (1, 4, 30, 100)]
    assert all(d == docs[0] for d in docs)


def test_integer_mean_and_var_are_correctly_rounded(rng):
    x = rng.integers(0, 256, (20, 9, 9, 1), dtype=np.uint8)
    mean, var = exact_mean_var(x)
    s = stream(x, 3)
    assert s.mean_[0] == mean and s.var_[0] == var  # the exact value, rounded once


def test_large_offset_where_the_naive_formula_fails(rng):
    x = (1e8 + rng.normal(0, 1, (50, 4, 4, 1))).astype(np.float64)
    mean, var = exact_mean_var(x)
    flat = x.ravel()
    naive = (flat ** 2).mean() - flat.mean() ** 2
    assert abs(naive - var) / var > 1e-3  # the textbook formula has lost the digits
    for batch_size in (1, 7, 50):
        s = stream(x, batch_size)
        assert s.mean_[0] == pytest.approx(mean, rel=REL)
        assert s.var_[0] == pytest.approx(var, rel=REL)
        assert s.std_[0] == pytest.approx(math.sqrt(var), rel=REL)


def test_list_of_images_with_different_sizes(rng):
    imgs = [rng.integers(0, 256, (h, 4, 3), dtype=np.uint8) for h in (2, 3, 5)]
    s = RunningStats(3, np.uint8).update(imgs)
    flat = np.concatenate([a.reshape(-1, 3) for a in imgs]).astype(np.float64)
    np.testing.assert_allclose(s.mean_, flat.mean(axis=0), rtol=REL)
    assert s.images_ == 3 and s.shape_ is None


def test_constant_data_has_zero_variance():
    s = RunningStats(1, np.uint8).update(np.full((3, 2, 2, 1), 7, np.uint8))
    assert s.var_[0] == 0 and s.mean_[0] == 7


def test_merge_equals_one_pass(rng):
    for dtype in (np.uint8, np.float64):
        x = (rng.random((25, 3, 3, 2)) * 200).astype(dtype)
        a, b = stream(x[:11], 4), stream(x[11:], 5)
        whole = stream(x, 25)
        a.merge(b)
        np.testing.assert_allclose(a.mean_, whole.mean_, rtol=REL)
        np.testing.assert_allclose(a.var_, whole.var_, rtol=REL)
        assert a.images_ == 25 and a.count_ == whole.count_


def test_dict_round_trip_and_document_merge(rng):
    x = rng.integers(0, 256, (10, 3, 3, 3), dtype=np.uint8)
    part = lambda s: stats_document(source="s", color="rgb", channels=3, max_value=255,
                                    splits={"train": s}, fit_split="train")
    back = RunningStats.from_dict(stream(x, 3).to_dict())
    assert back.to_dict() == stream(x, 3).to_dict()
    merged = merge_documents(part(stream(x[:4], 2)), part(stream(x[4:], 2)))
    assert merged["splits"]["train"] == part(stream(x, 10))["splits"]["train"]


def test_document_has_the_documented_fields(rng):
    x = rng.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    doc = stats_document(source="src", color="rgb", channels=3, max_value=255,
                         splits={"train": stream(x, 2)}, fit_split="train")
    assert doc["format"] == "imgnorm.stats" and doc["version"] == 2
    t = doc["splits"]["train"]
    assert t["images"] == 4 and t["pixels"] == 16 and t["shape"] == [2, 2, 3]
    assert set(t["global"]) == {"count", "mean", "var", "std", "min", "max"}
    assert set(t["per_channel"]) == {"count", "mean", "var", "std", "min", "max"}
    assert t["unit_scale"]["mean"] == [m / 255 for m in t["per_channel"]["mean"]]


def test_read_stats_document_rejects_bad_files(tmp_path):
    bad = {"not json": "{", "other": '{"format": "x"}',
           "version": '{"format": "imgnorm.stats", "version": 99}',
           "no splits": '{"format": "imgnorm.stats", "version": 1, "splits": {}, "fit_split": "t"}'}
    for name, text in bad.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(StatsFileError, match=str(p)):
            read_stats_document(p)
    with pytest.raises(StatsFileError, match="no such"):
        read_stats_document(tmp_path / "missing.json")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("pixels", [1, 5, 1023, 4096, 70001])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
def test_histogram_kernels_equal_numpy_exactly(rng, channels, pixels, dtype, monkeypatch):
    from imgnorm import stats
    assert stats._u8_hist is not None and stats._u16_hist is not None, \
        "imgnorm._kernels was not built (needs a C compiler)"
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (pixels, channels)).astype(dtype)
    levels = 1 << (8 * np.dtype(dtype).itemsize)
    fast = np.zeros((channels, levels), np.uint64)
    stats.add_histogram(x, fast)
    monkeypatch.setattr(stats, "_u8_hist", None)
    monkeypatch.setattr(stats, "_u16_hist", None)
    slow = np.zeros((channels, levels), np.uint64)
    stats.add_histogram(x, slow)
    np.testing.assert_array_equal(fast, slow)
    values = stats.level_values(dtype)
    for c in range(channels):  # every bin counts its own value
        vals, counts = np.unique(x[:, c], return_counts=True)
        bins = np.searchsorted(values[np.argsort(values)], vals)  # value -> its bin
        np.testing.assert_array_equal(fast[c][np.argsort(values)][bins], counts)
        assert fast[c].sum() == pixels


def test_sums_from_the_histogram_are_exact(rng):
    x = rng.integers(0, 65536, (7, 50, 40, 2)).astype(np.uint16)
    s = stream(x, 3)
    exact = x.reshape(-1, 2).astype(object)
    assert s.sum_ == [int(v) for v in exact.sum(axis=0)]
    assert s.sum_sq_ == [int(v) for v in (exact ** 2).sum(axis=0)]


def test_document_bytes_are_indented_json_with_number_lists_on_one_line(rng):
    x = rng.integers(0, 65536, size=(2, 8, 8, 2), dtype=np.uint16)
    rs = RunningStats(2, np.uint16)
    rs.update(x)
    doc = stats_document(source="s", color="keep", channels=2, max_value=65535, splits={"all": rs},
                         fit_split="all")
    text = document_bytes(doc).decode()
    import json
    assert json.loads(text) == doc  # the same document
    bins = doc["splits"]["all"]["hist"]["bins"]
    lines = text.splitlines()
    assert json.dumps(bins[0]) in [line.strip().rstrip(",") for line in lines]  # one line per channel
    assert len(lines) < 200 and lines[1] == '  "format": "imgnorm.stats",'
