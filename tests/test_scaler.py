"""imgnorm.Scaler as a scikit-learn user would use it: fit in batches, merge,
transform, invert, save and load; equal to the CLI's HDF5 output bit for bit
and to scikit-learn's StandardScaler to 1e-12."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import imgnorm
from imgnorm.cli import cli
from imgnorm.errors import DataError, OptionError
from imgnorm.transforms import IMAGENET_MEAN, IMAGENET_STD, Scaler

from conftest import write_jpeg


@pytest.fixture
def x(rng):
    return rng.integers(0, 256, (97, 6, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_partial_fit_in_any_batches_equals_fit(x, per_channel):
    whole = Scaler(per_channel=per_channel).fit(x)
    for size in (1, 2, 50, len(x), len(x) + 42):
        s = Scaler(per_channel=per_channel)
        for i in range(0, len(x), size):
            s.partial_fit(x[i:i + size])
        assert s.to_stats() == whole.to_stats()  # bit for bit: the sums are integers
        np.testing.assert_array_equal(s.transform(x), whole.transform(x))


def test_merge_of_disjoint_parts_in_any_order(x):
    parts = [Scaler("center").fit(x[a:b]) for a, b in ((0, 10), (10, 60), (60, 97))]
    whole = Scaler("center").fit(x)
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        merged = Scaler("center")
        for k in order:
            merged.merge(parts[k])
        np.testing.assert_array_equal(merged.mean_, whole.mean_)
        assert merged.n_images_ == 97 and merged.n_pixels_ == 97 * 30
    with pytest.raises(DataError, match="their options differ"):
        Scaler("standardize").merge(parts[0])


def test_statistics_equal_numpy_and_sklearn(x):
    from sklearn.preprocessing import StandardScaler
    flat = x.reshape(-1, 3).astype(np.float64)
    ref = StandardScaler().fit(flat)
    s = Scaler("standardize", per_channel=True).fit(x)
    np.testing.assert_allclose(s.mean_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(s.std_, ref.scale_, rtol=1e-12)
    np.testing.assert_allclose(s.offset_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(s.scale_, ref.scale_, rtol=1e-12)
    y = s.transform(x, dtype=np.float64)
    np.testing.assert_allclose(y.reshape(-1, 3), ref.transform(flat), rtol=1e-12, atol=1e-12)
    g = Scaler("standardize").fit(x)  # global: all channels pooled
    np.testing.assert_allclose(g.mean_, np.full(3, flat.mean()), rtol=1e-12)
    np.testing.assert_allclose(g.std_, np.full(3, flat.std()), rtol=1e-12)
    assert (s.min_ == flat.min(axis=0)).all() and (s.max_ == flat.max(axis=0)).all()


def test_float_pixels_on_a_large_offset(rng):
    x = 1e8 + rng.normal(size=(40, 4, 4, 2))
    s = Scaler("standardize", per_channel=True)
    for i in range(0, 40, 7):
        s.partial_fit(x[i:i + 7])
    np.testing.assert_allclose(s.mean_, x.reshape(-1, 2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.std_, x.reshape(-1, 2).std(axis=0), rtol=1e-10)


def _cli_h5(tmp_path, source, *args):
    out = tmp_path / f"cli{len(list(tmp_path.glob('cli*.h5')))}.h5"
    r = CliRunner().invoke(cli, [args[0], str(source), "-o", str(out), "--stats-out", str(out) + ".json", *args[1:]])
    assert r.exit_code == 0, r.output
    return out


CASES = [
    ("standardize",), ("standardize", "--per-channel"), ("standardize", "--epsilon", "1e-6", "--per-channel"),
    ("standardize", "--clip-rescale"), ("normalize",), ("normalize", "--minmax", "--per-channel"),
    ("center",), ("center", "--unit", "--per-channel"), ("standardize", "--per-image", "--per-channel"),
    ("normalize", "--dtype", "float16"), ("standardize", "--dtype", "float64"),
]


def _scaler_for(args) -> tuple[Scaler, str]:
    method, flags = args[0], args[1:]
    opts = {"per_channel": "--per-channel" in flags, "per_image": "--per-image" in flags,
            "minmax": "--minmax" in flags, "unit": "--unit" in flags, "clip_rescale": "--clip-rescale" in flags}
    if "--epsilon" in flags:
        opts["epsilon"] = float(flags[flags.index("--epsilon") + 1])
    dtype = flags[flags.index("--dtype") + 1] if "--dtype" in flags else "float32"
    return Scaler(method, **opts), dtype


@pytest.mark.parametrize("args", CASES)
def test_transform_equals_what_the_cli_writes_mnist(tmp_path, rng, args):
    data = {"x_train": rng.integers(0, 256, (300, 9, 7), dtype=np.uint8),
            "x_test": rng.integers(0, 256, (40, 9, 7), dtype=np.uint8)}
    np.savez(tmp_path / "m.npz", **data)
    out = _cli_h5(tmp_path, tmp_path / "m.npz", *args)
    scaler, dtype = _scaler_for(args)
    for i in range(0, 300, 64):  # in batches, as a training script streams
        scaler.partial_fit(data["x_train"][i:i + 64])
    loaded = Scaler.from_hdf5(out)  # what the file says it applied
    want_params = {k: v for k, v in scaler.get_params().items() if k != "max_value"}
    assert {k: v for k, v in loaded.get_params().items() if k != "max_value"} == want_params
    with h5py.File(out) as f:
        for split in ("train", "test"):
            want = f[split]["x"][...]
            got = scaler.transform(data[f"x_{split}"], dtype=dtype)  # (N, H, W): gray, no channel axis
            np.testing.assert_array_equal(got, want[..., 0])
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(loaded.transform(data[f"x_{split}"][..., None], dtype=dtype), want)


@pytest.mark.parametrize("args", [("standardize", "--per-channel"), ("center", "--unit"),
                                  ("standardize", "--per-image")])
def test_transform_equals_what_the_cli_writes_photos(tmp_path, rng, args):
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            write_jpeg(tmp_path / "p" / split / "c" / f"{i}.jpg", rng, size=(40, 30))
    out = _cli_h5(tmp_path, tmp_path / "p", *args, "--size", "16x12")
    src = imgnorm.open_source(tmp_path / "p", size=(16, 12))
    scaler, dtype = _scaler_for(args)
    train = np.concatenate([b.images for b in src.splits["train"].batches(4)])
    scaler.fit(train)
    with h5py.File(out) as f:
        for split in ("train", "val"):
            imgs = np.concatenate([b.images for b in src.splits[split].batches(5)])
            np.testing.assert_array_equal(scaler.transform(imgs), f[split]["x"][...])
            np.testing.assert_array_equal(scaler.transform(imgs[0]), f[split]["x"][0])  # one image


def test_loaded_statistics_and_presets_equal_the_cli(tmp_path, rng):
    x = rng.integers(0, 256, (50, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x)
    out = _cli_h5(tmp_path, tmp_path / "d.npz", "standardize", "--per-channel")
    doc = imgnorm.read_stats_document(str(out) + ".json")
    s = Scaler.from_stats(doc, per_channel=True)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(s.transform(x), f["train/x"][...])
    out = _cli_h5(tmp_path, tmp_path / "d.npz", "standardize", "--stats", "imagenet")
    p = Scaler.preset("imagenet")
    with h5py.File(out) as f:
        np.testing.assert_array_equal(p.transform(x), f["train/x"][...])
    want = ((x - np.array(IMAGENET_MEAN) * 255) / (np.array(IMAGENET_STD) * 255)).astype(np.float32)
    np.testing.assert_array_equal(p.transform(x), want)
    np.testing.assert_allclose(p.mean_, np.array(IMAGENET_MEAN) * 255)


def test_pickle_and_json_round_trips_give_the_same_transform(x):
    for s in (Scaler("standardize", per_channel=True, clip_rescale=True).fit(x), Scaler.preset("clip"),
              Scaler("normalize", minmax=True).fit(x)):
        want = s.transform(x)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(s)).transform(x), want)
        again = Scaler.from_stats(json.loads(json.dumps(s.to_stats())))
        assert again.get_params() == s.get_params()
        np.testing.assert_array_equal(again.transform(x), want)


def test_write_and_read_a_document(tmp_path, x):
    s = Scaler("center", unit=True).fit(x)
    imgnorm.write_stats_document(s.to_stats(), tmp_path / "s.json")
    with pytest.raises(OptionError, match="exists"):
        imgnorm.write_stats_document(s.to_stats(), tmp_path / "s.json")
    back = Scaler.from_stats(imgnorm.read_stats_document(tmp_path / "s.json"))
    np.testing.assert_array_equal(back.transform(x), s.transform(x))


@pytest.mark.parametrize("scaler", [Scaler("standardize", per_channel=True), Scaler("center", unit=True),
                                    Scaler("normalize", minmax=True), Scaler("standardize", clip_rescale=True),
                                    Scaler("normalize")])
def test_inverse_transform_returns_the_pixels(x, scaler):
    scaler.fit(x)
    back = scaler.inverse_transform(scaler.transform(x, dtype=np.float64))
    if scaler.clip_rescale:  # clipped values come back as the clip bound
        lo, hi = scaler.offset_ - scaler.scale_, scaler.offset_ + scaler.scale_
        np.testing.assert_allclose(back, np.clip(x, lo, hi), rtol=1e-12)
    else:
        np.testing.assert_allclose(back, x, rtol=0, atol=1e-9)
        assert (np.rint(scaler.inverse_transform(scaler.transform(x))) == x).all()  # from float32, after rounding


def test_options_are_checked_at_construction_and_kept():
    for kwargs, text in (({"method": "whiten"}, "unknown method"), ({"method": "standardize", "unit": True},
                         "--unit does not apply"), ({"epsilon": float("nan")}, "--epsilon must be"),
                         ({"max_value": 0}, "--max-value must be"), ({"method": "center", "epsilon": 1e-6},
                                                                     "--epsilon does not apply")):
        with pytest.raises(OptionError, match=text):
            Scaler(**kwargs)
    s = Scaler("standardize", per_channel=True, epsilon=1e-6)
    before = s.get_params()
    s.fit(np.zeros((2, 3, 3, 3), np.uint8))
    assert s.get_params() == before
    assert repr(s) == "Scaler('standardize', per_channel=True, epsilon=1e-06)"
    assert repr(Scaler.preset("imagenet")) == "Scaler.preset('imagenet')"
    assert repr(Scaler.preset("clip", method="center")) == "Scaler.preset('clip', method='center')"
    assert eval(repr(s), {"Scaler": Scaler}).get_params() == s.get_params()


def test_shapes_and_errors(rng):
    gray = rng.integers(0, 256, (10, 4, 6), dtype=np.uint8)
    s = Scaler().fit(gray)  # (N, H, W): one channel
    assert s.transform(gray).shape == (10, 4, 6) and s.transform(gray[0]).shape == (4, 6)
    with pytest.raises(DataError, match="channel"):
        s.partial_fit(rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="not been fitted"):
        Scaler().transform(gray)
    with pytest.raises(DataError, match="cannot be inverted"):
        Scaler(per_image=True).inverse_transform(gray)
    with pytest.raises(DataError, match="NaN"):
        Scaler().fit(np.full((2, 2, 2), np.nan))
    with pytest.raises(OptionError, match="overflow float16"):
        Scaler("normalize", max_value=1.0).transform(np.full((1, 2, 2, 1), 1e6), dtype=np.float16)
    assert Scaler("normalize").transform(gray).max() <= 1  # nothing to fit: x / 255
    assert issubclass(DataError, ValueError)  # as scikit-learn users expect


def test_zero_std_gets_scale_one(rng):
    x = rng.integers(0, 256, (5, 3, 3, 2), dtype=np.uint8)
    x[..., 1] = 7
    s = Scaler("standardize", per_channel=True).fit(x)
    assert s.scale_[1] == 1.0 and (s.transform(x)[..., 1] == 0).all()
    assert any("has std 0" in w for w in s.scaling().warnings)
