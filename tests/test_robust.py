"""Beyond mean and std, end to end: stats documents of version 2 (exact
percentiles, histograms, per-class statistics, provenance), robust scaling and
percentile clipping, equal to numpy on the stacked pixels."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import imgnorm
from imgnorm.cli import cli
from imgnorm.stats import PERCENTILES

from conftest import write_jpeg


@pytest.fixture
def runner():
    return CliRunner()


def numpy_block(x: np.ndarray, q) -> dict:
    return {"percentiles": [float(v) for v in np.percentile(x, q)], "median": float(np.median(x)),
            "iqr": float(np.percentile(x, 75) - np.percentile(x, 25)),
            "mad": float(np.median(np.abs(x - np.median(x))))}


@pytest.fixture
def folder(tmp_path, rng):
    for split, n in (("train", {"a": 5, "b": 3, "c": 4}), ("val", {"a": 2, "b": 2, "c": 1})):
        for cls, k in n.items():
            for i in range(k):
                write_jpeg(tmp_path / "f" / split / cls / f"{i}.jpg", rng, size=(20 + 3 * i, 14 + i))
    return tmp_path / "f"


def pixels(files):
    return np.concatenate([np.asarray(Image.open(f).convert("RGB")).reshape(-1, 3) for f in files])


@pytest.mark.parametrize("workers, batch", [(1, None), (2, 3), (2, None)])
def test_folder_percentiles_equal_numpy_for_any_workers_and_batches(runner, folder, workers, batch):
    args = ["stats", str(folder), "--json", "--workers", str(workers)] + (["--batch-size", str(batch)] if batch else [])
    doc = json.loads(runner.invoke(cli, args).stdout)
    assert doc["version"] == 2
    src = imgnorm.open_source(folder)
    for name in ("train", "val"):
        x = pixels(src.splits[name].files)
        block = doc["splits"][name]["percentiles"]
        assert block["q"] == list(PERCENTILES)
        assert block["global"] == numpy_block(x.ravel(), PERCENTILES)
        assert block["per_channel"] == [numpy_block(x[:, c], PERCENTILES) for c in range(3)]


def test_chosen_percentiles_and_per_class_statistics(runner, folder):
    q = [0.1, 2.5, 50, 97.5]
    doc = json.loads(runner.invoke(cli, ["stats", str(folder), "--json", "--percentiles", "0.1,2.5,50,97.5",
                                         "--per-class"]).stdout)
    src = imgnorm.open_source(folder)
    train = doc["splits"]["train"]
    assert list(train["classes"]) == ["a", "b", "c"]
    assert [train["classes"][c]["images"] for c in "abc"] == [5, 3, 4]  # as the folder holds
    assert doc["splits"]["val"]["classes"]["c"]["images"] == 1
    files, labels = src.splits["train"].files, src.splits["train"].labels
    for k, cls in enumerate("abc"):
        x = pixels([f for f, lab in zip(files, labels) if lab == k])
        entry = train["classes"][cls]
        assert entry["percentiles"]["global"] == numpy_block(x.ravel(), q)
        assert entry["per_channel"]["mean"] == pytest.approx(list(x.mean(axis=0)), rel=1e-12)
    assert train["global"]["mean"] == pytest.approx(pixels(files).mean(), rel=1e-12)  # the classes add up
    assert "hist" in train and all("hist" not in c for c in train["classes"].values())  # kept small


def test_a_16_bit_per_class_document_stays_small_and_reads_back(runner, tmp_path, rng):
    # Spread 16-bit pixels over many levels and 40 classes: with a level
    # histogram per class the document would be tens of MB.
    x = rng.integers(0, 65536, size=(80, 24, 24), dtype=np.uint16)
    np.savez(tmp_path / "w.npz", x_train=x, y_train=np.arange(80) % 40)
    out = tmp_path / "w.json"
    r = runner.invoke(cli, ["stats", str(tmp_path / "w.npz"), "--per-class", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size < 3_000_000
    doc = json.loads(out.read_text())
    assert len(doc["splits"]["train"]["classes"]) == 40
    assert doc["splits"]["train"]["percentiles"]["global"] == numpy_block(x.ravel(), PERCENTILES)
    r = runner.invoke(cli, ["standardize", str(tmp_path / "w.npz"), "--stats", str(out), "--robust",
                            "-o", str(tmp_path / "w.h5")])
    assert r.exit_code == 0, r.output


def test_float_pixels_have_null_percentiles_with_the_reason(runner, tmp_path, rng):
    np.savez(tmp_path / "f.npz", x=rng.random((4, 5, 5)).astype(np.float32))
    doc = json.loads(runner.invoke(cli, ["stats", str(tmp_path / "f.npz"), "--json"]).stdout)
    block = doc["splits"]["all"]["percentiles"]
    assert block["global"] is None and "float pixels" in block["reason"]
    r = runner.invoke(cli, ["stats", str(tmp_path / "f.npz")])
    assert "percentiles: none (float pixels" in r.output
    r = runner.invoke(cli, ["standardize", str(tmp_path / "f.npz"), "--robust", "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 2 and "'--robust': needs exact percentiles" in r.output


def test_provenance_and_a_document_applied_to_pixels_read_otherwise(runner, folder, tmp_path):
    doc = json.loads(runner.invoke(cli, ["stats", str(folder), "--size", "16", "--json"]).stdout)
    prov = doc["provenance"]
    assert prov["imgnorm_version"] == imgnorm.__version__
    assert prov["read"]["size"] == [16, 16] and prov["read"]["color"] == "rgb"
    assert prov["files"]["train"]["count"] == 12 and len(prov["files"]["train"]["sha256"]) == 64
    again = json.loads(runner.invoke(cli, ["stats", str(folder), "--size", "16", "--json"]).stdout)["provenance"]
    assert again == prov  # the same files, the same digest
    (folder / "val" / "a" / "0.jpg").write_bytes((folder / "val" / "a" / "1.jpg").read_bytes() + b"\0")
    changed = json.loads(runner.invoke(cli, ["stats", str(folder), "--size", "16", "--json"]).stdout)["provenance"]
    assert changed["files"]["val"]["sha256"] != prov["files"]["val"]["sha256"]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    for args, what in ((["--color", "keep"], "color rgb"), (["--size", "24"], "size 16x16")):
        r = runner.invoke(cli, ["standardize", str(folder), "--stats", str(tmp_path / "s.json"), "-o",
                                str(tmp_path / "o.h5"), *args] + ([] if "--size" in args else ["--size", "16"]))
        assert r.exit_code == 1 and what in r.output and "--force-stats" in r.output, r.output


def test_version_1_documents_are_still_read(runner, folder, tmp_path):
    doc = json.loads(runner.invoke(cli, ["stats", str(folder), "--size", "16", "--json"]).stdout)
    v1 = json.loads(json.dumps(doc))
    v1["version"] = 1
    del v1["provenance"]
    for entry in v1["splits"].values():
        del entry["hist"], entry["percentiles"]
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    outs = []
    for name in ("v1", "v2"):
        r = runner.invoke(cli, ["standardize", str(folder), "--size", "16", "--stats", str(tmp_path / f"{name}.json"),
                                "-o", str(tmp_path / f"{name}.h5")])
        assert r.exit_code == 0, r.output
        with h5py.File(tmp_path / f"{name}.h5") as f:
            outs.append(f["val/x"][...])
    np.testing.assert_array_equal(outs[0], outs[1])
    r = runner.invoke(cli, ["inspect", str(tmp_path / "v1.json")])
    assert r.exit_code == 0 and "split train" in r.output
    r = runner.invoke(cli, ["standardize", str(folder), "--size", "16", "--stats", str(tmp_path / "v1.json"),
                            "--robust", "-o", str(tmp_path / "r.h5")])
    assert r.exit_code == 1 and "no histogram" in r.output


def test_merged_documents_have_the_percentiles_of_the_whole(rng):
    x = rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)
    a = imgnorm.Scaler().fit(x[:11]).to_stats()
    b = imgnorm.Scaler().fit(x[11:]).to_stats()
    merged = imgnorm.merge_documents(a, b)["splits"]["fit"]
    assert merged["percentiles"]["global"] == numpy_block(x.ravel(), PERCENTILES)
    assert merged["hist"] == imgnorm.Scaler().fit(x).to_stats()["splits"]["fit"]["hist"]


# ------------------------------------------------------------ robust scaling and clipping


@pytest.fixture
def npz(tmp_path, rng):
    x = np.clip(rng.normal(120, 40, (80, 7, 6, 3)), 0, 255).astype(np.uint8)
    x[0, 0, 0] = [255, 0, 255]  # outliers
    t = rng.integers(0, 256, (10, 7, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=t)
    return tmp_path / "d.npz", x.astype(np.float64), t


def write(runner, npz_path, tmp_path, method, *args, dtype="float64"):
    out = tmp_path / "o.h5"
    r = runner.invoke(cli, [method, str(npz_path), "-o", str(out), "--force", "--dtype", dtype, *args])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        return f["test/x"][...]


@pytest.mark.parametrize("per_channel", [False, True])
def test_robust_equals_robust_scaler_formula(runner, npz, tmp_path, per_channel):
    path, x, t = npz
    axes = (0, 1, 2) if per_channel else None
    flat = x.reshape(-1, 3) if per_channel else x.ravel()
    med = np.median(flat, axis=0 if per_channel else None)
    q25, q75 = np.percentile(flat, [25, 75], axis=0 if per_channel else None)
    got = write(runner, path, tmp_path, "standardize", "--robust", *(["--per-channel"] if per_channel else []))
    np.testing.assert_array_equal(got, (t - med) / (q75 - q25))  # bit for bit, float64
    from sklearn.preprocessing import RobustScaler
    if per_channel:
        ref = RobustScaler().fit(x.reshape(-1, 3))
        np.testing.assert_allclose(got.reshape(-1, 3), ref.transform(t.reshape(-1, 3).astype(np.float64)),
                                   rtol=1e-12, atol=1e-12)
    assert axes is None or True


@pytest.mark.parametrize("per_channel", [False, True])
def test_clip_percentiles_for_every_method(runner, npz, tmp_path, per_channel):
    path, x, t = npz
    pc = ["--per-channel"] if per_channel else []
    flat = x.reshape(-1, 3) if per_channel else x.ravel()
    ax = 0 if per_channel else None
    lo, hi = np.percentile(flat, [0.5, 99.5], axis=ax)
    got = write(runner, path, tmp_path, "normalize", "--clip-percentiles", "0.5,99.5", *pc)
    want = (np.clip(t, lo, hi) - lo) / (hi - lo)
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() <= 1
    clipped = np.clip(flat, lo, hi)
    got = write(runner, path, tmp_path, "center", "--clip-percentiles", "0.5,99.5", *pc)
    np.testing.assert_allclose(got, np.clip(t, lo, hi) - clipped.mean(axis=ax), rtol=1e-13, atol=1e-12)
    got = write(runner, path, tmp_path, "standardize", "--clip-percentiles", "0.5,99.5", *pc)
    np.testing.assert_allclose(got, (np.clip(t, lo, hi) - clipped.mean(axis=ax)) / clipped.std(axis=ax),
                               rtol=1e-12, atol=1e-12)
    got = write(runner, path, tmp_path, "standardize", "--clip-percentiles", "1,99", "--robust", *pc)
    lo, hi = np.percentile(flat, [1, 99], axis=ax)
    clipped = np.clip(flat, lo, hi)
    med, (q25, q75) = np.median(clipped, axis=ax), np.percentile(clipped, [25, 75], axis=ax)
    np.testing.assert_array_equal(got, (np.clip(t, lo, hi) - med) / (q75 - q25))


def test_per_image_robust_and_clip(runner, npz, tmp_path):
    path, x, t = npz
    got = write(runner, path, tmp_path, "standardize", "--per-image", "--robust")
    tf = t.astype(np.float64).reshape(len(t), -1)
    med = np.median(tf, axis=1)
    q25, q75 = np.percentile(tf, [25, 75], axis=1)
    np.testing.assert_allclose(got.reshape(len(t), -1), (tf - med[:, None]) / (q75 - q25)[:, None], rtol=1e-12)
    got = write(runner, path, tmp_path, "normalize", "--per-image", "--clip-percentiles", "2,98")
    lo, hi = np.percentile(tf, [2, 98], axis=1)
    want = (np.clip(tf, lo[:, None], hi[:, None]) - lo[:, None]) / (hi - lo)[:, None]
    np.testing.assert_allclose(got.reshape(len(t), -1), want, rtol=1e-12, atol=1e-15)


def test_robust_scaler_in_python_and_from_the_file(npz, tmp_path, runner):
    path, x, t = npz
    s = imgnorm.Scaler("standardize", robust=True, clip_percentiles=(0.5, 99.5), per_channel=True)
    s.fit(x.astype(np.uint8))
    got = write(runner, path, tmp_path, "standardize", "--robust", "--clip-percentiles", "0.5,99.5",
                "--per-channel", dtype="float32")
    np.testing.assert_array_equal(s.transform(t), got)
    np.testing.assert_array_equal(imgnorm.Scaler.from_hdf5(str(tmp_path / "o.h5")).transform(t), got)
    back = imgnorm.Scaler.from_stats(json.loads(json.dumps(s.to_stats())))
    np.testing.assert_array_equal(back.transform(t), got)
    assert repr(s) == "Scaler('standardize', per_channel=True, robust=True, clip_percentiles=(0.5, 99.5))"


def test_zero_iqr_gets_scale_one(rng):
    x = np.full((5, 4, 4, 1), 9, np.uint8)
    x[0, 0, 0, 0] = 200
    s = imgnorm.Scaler("standardize", robust=True).fit(x)
    assert s.scale_[0] == 1.0 and any("IQR 0" in w for w in s.scaling().warnings)


def test_bad_percentile_options(runner, npz, tmp_path):
    path = npz[0]
    for args, text in ((["--clip-percentiles", "99,1"], "LO < HI"), (["--clip-percentiles", "5"], "LO,HI"),
                       (["--clip-percentiles", "-1,50"], "0 to 100")):
        r = runner.invoke(cli, ["normalize", str(path), "-o", str(tmp_path / "o.h5"), *args])
        assert r.exit_code == 2 and text in r.output, r.output
    r = runner.invoke(cli, ["normalize", str(path), "--robust", "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 2
    r = runner.invoke(cli, ["normalize", str(path), "--minmax", "--clip-percentiles", "1,99", "-o",
                            str(tmp_path / "o.h5")])
    assert r.exit_code == 2 and "cannot take --minmax" in r.output
    r = runner.invoke(cli, ["stats", str(path), "--percentiles", "50,101"])
    assert r.exit_code == 2
