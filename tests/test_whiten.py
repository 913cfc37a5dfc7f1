"""ZCA / PCA whitening: exact streaming sums, numpy and Keras references, the command end to end."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import imgnorm
from imgnorm.cli import cli
from imgnorm.errors import DataError, OptionError
from imgnorm.whiten import Whitener

from conftest import write_jpeg


def smooth_images(rng, n, h=6, w=6, c=3):
    """Correlated 8-bit images (neighbouring pixels and channels move together), well conditioned."""
    base = rng.normal(0, 1, (n, h + 2, w + 2, 1))
    x = sum(base[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 3
    x = x + rng.normal(0, 0.4, (n, h, w, c)) + np.array([0.0, 0.3, -0.2])[:c]
    return np.clip(128 + 30 * x, 0, 255).astype(np.uint8)


def reference(x, epsilon=1e-6):
    """The float64 reference on the stacked data: per-channel centring, (1/N) X^T X, eigh."""
    mean = x.reshape(-1, x.shape[-1]).astype(np.float64).mean(axis=0)
    flat = (x.astype(np.float64) - mean).reshape(len(x), -1)
    sigma = flat.T @ flat / len(x)
    s, u = np.linalg.eigh(sigma)
    s, u = s[::-1], u[:, ::-1]
    return mean, flat, sigma, s, u


def test_eigenvalues_matrix_and_whitened_covariance_match_the_float64_reference(rng):
    x = smooth_images(rng, 500)
    w = Whitener().fit(x)
    mean, flat, sigma, s, u = reference(x)
    np.testing.assert_allclose(w.mean_, mean, rtol=1e-15)
    assert np.abs(w.eigenvalues_ - np.maximum(s, 0)).max() <= 1e-10 * s[0]
    W = (u * (1 / np.sqrt(np.maximum(s, 0) + 1e-6))) @ u.T
    np.testing.assert_allclose(w.matrix_, W, atol=1e-9 * np.abs(W).max())
    z = w.transform(x).reshape(len(x), -1)
    np.testing.assert_allclose(z, flat @ W, atol=1e-9 * np.abs(flat @ W).max())
    # (1/N) sum z z^T = U diag(s / (s + eps)) U^T
    cz = z.T @ z / len(x)
    np.testing.assert_allclose(cz, (u * (s / (s + 1e-6))) @ u.T, atol=1e-6)


def test_the_null_space_too_when_there_are_fewer_images_than_values(rng):
    x = smooth_images(rng, 40)  # D = 108 > N = 40: 68 directions of zero variance
    w = Whitener(epsilon=1e-3).fit(x)
    _, flat, _, s, u = reference(x)
    s = np.maximum(s, 0)
    z = w.transform(x).reshape(len(x), -1)
    want = (u * (s / (s + 1e-3))) @ u.T
    np.testing.assert_allclose(z.T @ z / len(x), want, atol=1e-6)
    assert (w.eigenvalues_[40:] <= 1e-9 * w.eigenvalues_[0]).all()


def test_sums_are_exact_for_any_batching_and_merge_order(rng):
    x = smooth_images(rng, 300)
    whole = Whitener().fit(x)
    for step in (1, 7, 128):
        part = Whitener()
        for i in range(0, len(x), step):
            part.partial_fit(x[i:i + step])
        assert np.array_equal(part._sum_sq, whole._sum_sq) and np.array_equal(part.matrix_, whole.matrix_)
    a, b = Whitener().fit(x[:100]), Whitener().fit(x[100:])
    ab, ba = Whitener().merge(a).merge(b), Whitener().merge(b).merge(a)
    for m in (ab, ba):  # other shifts, re-centred exactly
        assert np.array_equal(m.eigenvalues_, whole.eigenvalues_)
        assert np.array_equal(m.matrix_, whole.matrix_)
    z = whole.transform(x)
    z2 = np.concatenate([whole.transform(x[i:i + 33]) for i in range(0, len(x), 33)])
    assert np.array_equal(z, z2)  # the output's bits do not depend on the batch either


def test_keras_preprocessing_zca_is_matched_to_its_float32_precision(rng):
    kp = pytest.importorskip("keras_preprocessing.image")
    x = smooth_images(rng, 600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = kp.ImageDataGenerator(zca_whitening=True, zca_epsilon=1e-6)
        gen.fit(x)
        zk = gen.standardize(x.astype(np.float32))
    z = Whitener(epsilon=1e-6).fit(x).transform(x)
    assert np.abs(z - zk).max() <= 2e-4 * np.abs(z).max()


@pytest.mark.parametrize("n", [300, 50])
def test_keras_3_places_epsilon_on_the_singular_values(rng, n):
    x = smooth_images(rng, n)
    w = Whitener(keras=3, epsilon=1e-2).fit(x)
    mean = x.reshape(-1, 3).astype(np.float64).mean(axis=0)
    flat = (x.astype(np.float64) - mean).reshape(n, -1)
    # Keras 3's own formula (keras/src/legacy/preprocessing/image.py)
    u, s, _ = np.linalg.svd(flat.T, full_matrices=False)
    want = (u * (np.sqrt(n) / (s + 1e-2))) @ u.T
    np.testing.assert_allclose(w.matrix_, want, atol=1e-8 * np.abs(want).max())


def test_pca_components_order_signs_and_inverse(rng):
    x = smooth_images(rng, 400)
    p = Whitener("pca", epsilon=0.0).fit(x)
    z = p.transform(x)
    assert z.shape == (400, 108)
    np.testing.assert_allclose(z.T @ z / 400 - np.outer(z.mean(0), z.mean(0)) * 0, np.eye(108), atol=1e-8)
    np.testing.assert_allclose(p.inverse_transform(z), x, atol=1e-8)
    u = p.eigenvectors_
    assert (u[np.argmax(np.abs(u), axis=0), np.arange(108)] > 0).all()  # each vector's largest entry positive
    k = Whitener("pca", components=5).fit(x)
    assert k.transform(x[:3]).shape == (3, 5) and k.output_shape((6, 6, 3)) == (5,)
    np.testing.assert_array_equal(k.transform(x[:3]), Whitener("pca").fit(x).transform(x[:3])[:, :5])


def test_standardize_and_unit_are_the_same_whitening_of_scaled_pixels(rng):
    x = smooth_images(rng, 300)
    mean, flat, _, _, _ = reference(x)
    std = x.reshape(-1, 3).astype(np.float64).std(axis=0)
    zs = Whitener(standardize=True).fit(x).transform(x)
    ref = Whitener().fit(((x.astype(np.float64) - mean) / std)).transform((x.astype(np.float64) - mean) / std)
    np.testing.assert_allclose(zs, ref, atol=1e-9)
    zu = Whitener(unit=True, epsilon=1e-5).fit(x).transform(x)
    ref = Whitener(epsilon=1e-5).fit(x / 255.0).transform(x / 255.0)
    np.testing.assert_allclose(zu, ref, atol=1e-8)


def test_bad_inputs_and_options(rng):
    with pytest.raises(OptionError, match="--components"):
        Whitener("zca", components=3)
    with pytest.raises(OptionError, match="epsilon"):
        Whitener(epsilon=float("nan"))
    w = Whitener().fit(smooth_images(rng, 10))
    with pytest.raises(DataError, match="fitted on"):
        w.transform(np.zeros((1, 5, 5, 3), np.uint8))
    with pytest.raises(DataError, match="zero variance.*--epsilon"):
        Whitener(epsilon=0.0).fit(smooth_images(rng, 10)).transform(smooth_images(rng, 1))
    with pytest.raises(DataError, match="not fitted"):
        Whitener().transform(np.zeros((1, 2, 2, 1)))


def test_a_dimension_too_large_is_refused_before_any_pixel_is_read(tmp_path, rng, monkeypatch):
    import imgnorm.whiten as wh
    np.savez(tmp_path / "x.npz", x_train=rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8))
    monkeypatch.setattr(wh, "memory_limit", lambda: 1 << 30)  # a 2 GiB machine's half
    read = []
    monkeypatch.setattr(imgnorm.sources.ArraySplit, "read", lambda *a, **k: read.append(1))
    out = tmp_path / "o.h5"
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "x.npz"), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "D = 4,800" in r.output and "--size" in r.output and "GiB" in r.output
    assert not read and not out.exists()


# ---------------------------------------------------------------- the command


def test_whiten_command_writes_what_the_library_computes(tmp_path, rng):
    x = smooth_images(rng, 200)
    xt = smooth_images(rng, 30)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(200) % 3, x_test=xt, y_test=np.arange(30) % 3)
    out, fit = tmp_path / "o.h5", tmp_path / "zca.npz"
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "d.npz"), "-o", str(out), "--stats-out", str(fit),
                                 "--json", "--batch-size", "17"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["splits"]["train"]["shape"] == [200, 6, 6, 3] and summary["fitted_on"] == 200
    w = Whitener().fit(x)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/x"][...], w.transform(x, np.float32))
        np.testing.assert_array_equal(f["test/x"][...], w.transform(xt, np.float32))
        np.testing.assert_array_equal(f["whitening/matrix"][...], w.matrix_)
        assert json.loads(f.attrs["options"])["method"] == "zca"
    # the saved fit applies unchanged to new data, and reloads as a Whitener
    new = tmp_path / "new.npz"
    np.savez(new, x=xt)
    r = CliRunner().invoke(cli, ["whiten", str(new), "--fit", str(fit), "-o", str(tmp_path / "n.h5")])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "n.h5") as f:
        np.testing.assert_array_equal(f["all/x"][...], w.transform(xt, np.float32))
    np.testing.assert_array_equal(Whitener.load(fit).matrix_, w.matrix_)
    np.testing.assert_array_equal(Whitener.from_hdf5(out).transform(xt), w.transform(xt))
    r = CliRunner().invoke(cli, ["inspect", str(out)])
    assert r.exit_code == 0 and "whitening: zca, images 6x6x3, matrix 108x108" in r.output


def test_whitened_folder_bytes_do_not_depend_on_batch_size_or_workers(tmp_path, rng):
    for i in range(12):
        write_jpeg(tmp_path / "p" / "train" / ("a" if i % 2 else "b") / f"{i}.jpg", rng, size=(10 + i % 3, 9))
    for i in range(4):
        write_jpeg(tmp_path / "p" / "val" / "a" / f"{i}.jpg", rng, size=(11, 9))
    outs = []
    for extra in (["--workers", "1", "--batch-size", "1"], ["--workers", "2", "--batch-size", "5"], []):
        out = tmp_path / f"o{len(outs)}.h5"
        r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "p"), "--size", "5x4", "-o", str(out),
                                     "--epsilon", "1e-2", *extra])
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_pca_nchw_and_mixed_sizes(tmp_path, rng):
    x = smooth_images(rng, 100)
    np.savez(tmp_path / "d.npz", x_train=x)
    out = tmp_path / "p.h5"
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "d.npz"), "--pca", "--components", "7", "-o", str(out)])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f["train/x"].shape == (100, 7)
    r = CliRunner().invoke(cli, ["inspect", str(out)])
    assert r.exit_code == 0, r.output
    out2 = tmp_path / "n.h5"
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "d.npz"), "--layout", "nchw", "-o", str(out2)])
    with h5py.File(out2) as f:
        np.testing.assert_array_equal(f["train/x"][...],
                                      Whitener().fit(x).transform(x, np.float32).transpose(0, 3, 1, 2))
    write_jpeg(tmp_path / "m" / "a.jpg", rng, size=(8, 8))
    write_jpeg(tmp_path / "m" / "b.jpg", rng, size=(9, 8))
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "m"), "-o", str(tmp_path / "m.h5")])
    assert r.exit_code == 1 and "--size" in r.output and not (tmp_path / "m.h5").exists()


def test_a_saved_fit_for_other_images_is_refused(tmp_path, rng):
    np.savez(tmp_path / "a.npz", x=smooth_images(rng, 50))
    np.savez(tmp_path / "b.npz", x=smooth_images(rng, 5, h=5))
    fit = tmp_path / "f.npz"
    assert CliRunner().invoke(cli, ["whiten", str(tmp_path / "a.npz"), "-o", str(tmp_path / "a.h5"),
                                    "--stats-out", str(fit)]).exit_code == 0
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "b.npz"), "--fit", str(fit), "-o", str(tmp_path / "b.h5")])
    assert r.exit_code == 1 and "6x6x3" in r.output and "5x6x3" in r.output
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    r = CliRunner().invoke(cli, ["whiten", str(tmp_path / "a.npz"), "--fit", str(tmp_path / "junk.npz"),
                                 "-o", str(tmp_path / "c.h5")])
    assert r.exit_code == 1 and "junk.npz" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16])
def test_the_sums_equal_exact_integer_sums(rng, dtype):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (2500, 4, 4, 2)).astype(dtype)  # > EXACT32_ROWS rows
    w = Whitener()
    for i in range(0, len(x), 999):
        w.partial_fit(x[i:i + 999])
    shifted = x.reshape(len(x), -1).astype(np.int64) - (int(info.min) + int(info.max) + 1) // 2
    assert np.array_equal(w._sum, shifted.sum(axis=0).astype(np.float64))
    assert np.array_equal(w._sum_sq, (shifted.T @ shifted).astype(np.float64))  # int64: an independent reference
    mean = x.reshape(-1, 2).astype(np.float64).mean(axis=0)  # exact here: numpy's pairwise sum of integers
    assert list(w.mean_) == list(mean)


def test_a_consumed_or_hdf5_whitener_says_why_it_cannot_be_saved(rng, tmp_path):
    w = Whitener().fit(smooth_images(rng, 30))
    w._solve(consume=True)
    with pytest.raises(DataError, match="went into its decomposition"):
        w.save(tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists()
    assert w.transform(smooth_images(rng, 2)).shape == (2, 6, 6, 3)
