"""normalize / center / standardize to HDF5 against numpy on the stacked data."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from imgnorm.errors import OptionError, SourceError, StatsFileError
from imgnorm.pipeline import transform_to_hdf5
from imgnorm.sources import open_source
from imgnorm.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Scaler, Scaling, per_image_scaled



SCALER_OPTIONS = ("per_channel", "per_image", "minmax", "unit", "clip_rescale", "epsilon", "max_value")


def make_scaler(method, stats=None, **opts):
    """The Scaler the command line would make for these options."""
    if stats in PRESETS:
        return Scaler.preset(stats, method=method, **opts)
    if stats is not None:
        return Scaler.from_stats(stats, method=method, **opts)
    return Scaler(method, **opts)


def run(src_path, out, method, **kw):
    scaler = make_scaler(method, kw.pop("stats", None), **{k: kw.pop(k) for k in SCALER_OPTIONS if k in kw})
    return transform_to_hdf5(open_source(src_path, size=kw.pop("size", None)), str(out), scaler,
                             workers=kw.pop("workers", 1), **kw)


def stored(out, split, key="x"):
    with h5py.File(out, "r") as f:
        return f[split][key][...]


def folder_pixels(files):
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float64)


def test_normalize_equals_x_over_255_exactly_in_float32(mnist_npz_compressed, tmp_path):
    path, arrays = mnist_npz_compressed
    out = tmp_path / "n.h5"
    result = run(path, out, "normalize", batch_size=7)
    for split in ("train", "test"):
        x = arrays[f"x_{split}"][..., None]
        np.testing.assert_array_equal(stored(out, split), x.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(stored(out, split, "y"), arrays[f"y_{split}"])
    assert result["rows"] == {"train": 50, "test": 20}


@pytest.mark.parametrize("per_channel", [False, True])
def test_standardize_is_feature_wise_on_the_train_split(same_size_folder, tmp_path, per_channel):
    out = tmp_path / "s.h5"
    src = open_source(same_size_folder)
    transform_to_hdf5(src, str(out), Scaler("standardize", per_channel=per_channel), dtype="float64", workers=2,
                      batch_size=5)
    train = folder_pixels(src.splits["train"].files)
    axes = (0, 1, 2) if per_channel else None
    mean, std = train.mean(axis=axes), train.std(axis=axes)
    for split in ("train", "test"):
        x = folder_pixels(src.splits[split].files)
        np.testing.assert_allclose(stored(out, split), (x - mean) / std, rtol=1e-12, atol=1e-12)
    t = stored(out, "train")
    np.testing.assert_allclose(t.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(t.std(axis=axes), 1, rtol=1e-12)
    assert stored(out, "test").mean() != pytest.approx(0, abs=1e-6)  # test stats were not used
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["class_names"]) == ["a", "b"]
        assert f.attrs["method"] == "standardize"
        stats = json.loads(f.attrs["stats"])
        assert stats["fit_split"] == "train" and stats["format"] == "imgnorm.stats"
        files = [os.fsdecode(s) for s in f["train"]["files"][...]]  # relative to the source, as given
        assert files == [os.path.relpath(p, same_size_folder) for p in src.splits["train"].files]
        assert f["train"]["files"].attrs["encoding"] == "utf-8"
        assert f.attrs["source"] == str(same_size_folder) and stats["source"] == str(same_size_folder)
        assert f["train"]["y"][...].tolist() == src.splits["train"].labels.tolist()


def test_center_unit_and_fit_split(same_size_folder, tmp_path):
    out = tmp_path / "c.h5"
    src = open_source(same_size_folder)
    transform_to_hdf5(src, str(out), Scaler("center", unit=True), fit_split="test", dtype="float64", workers=1)
    mean = folder_pixels(src.splits["test"].files).mean()
    x = folder_pixels(src.splits["train"].files)
    np.testing.assert_allclose(stored(out, "train"), (x - mean) / 255, rtol=1e-12, atol=1e-14)


def test_minmax_and_clip_rescale(mnist_npz, tmp_path):
    path, arrays = mnist_npz
    x = arrays["x_train"][..., None].astype(np.float64)
    run(path, tmp_path / "m.h5", "normalize", minmax=True, dtype="float64")
    np.testing.assert_allclose(stored(tmp_path / "m.h5", "train"), (x - x.min()) / (x.max() - x.min()))
    run(path, tmp_path / "r.h5", "standardize", clip_rescale=True, dtype="float64")
    v = np.clip((x - x.mean()) / x.std(), -1, 1)
    np.testing.assert_allclose(stored(tmp_path / "r.h5", "train"), (v + 1) / 2, rtol=1e-12)


def test_per_image_standardize_and_blank_image(tmp_path, rng):
    x = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    x[2] = 77  # a blank image
    np.savez(tmp_path / "a.npz", x=x)
    for per_channel in (False, True):
        out = tmp_path / f"p{per_channel}.h5"
        result = run(tmp_path / "a.npz", out, "standardize", per_image=True, per_channel=per_channel,
                     dtype="float64", batch_size=4)
        axes = (1, 2) if per_channel else (1, 2, 3)
        xf = x.astype(np.float64)
        m, s = xf.mean(axis=axes, keepdims=True), xf.std(axis=axes, keepdims=True)
        want = (xf - m) / np.where(s == 0, 1, s)
        np.testing.assert_allclose(stored(out, "all"), want, rtol=1e-12, atol=1e-12)
        assert (stored(out, "all")[2] == 0).all()
        assert "1 image(s) had a zero std" in result["warnings"][0]


def test_epsilon_matches_keras_formula(mnist_npz, tmp_path):
    path, arrays = mnist_npz
    run(path, tmp_path / "e.h5", "standardize", epsilon=1e-6)
    x = arrays["x_train"][..., None].astype(np.float64)
    want = ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
    np.testing.assert_array_equal(stored(tmp_path / "e.h5", "train"), want)


def test_zero_std_channel_gets_scale_one_and_a_warning(tmp_path, rng):
    x = rng.integers(0, 256, (4, 3, 3, 2), dtype=np.uint8)
    x[..., 1] = 9
    np.savez(tmp_path / "z.npz", x=x)
    result = run(tmp_path / "z.npz", tmp_path / "z.h5", "standardize", per_channel=True)
    assert any("channel c1 has std 0" in w for w in result["warnings"])
    assert (stored(tmp_path / "z.h5", "all")[..., 1] == 0).all()


def test_stats_document_and_imagenet(same_size_folder, tmp_path):
    src = open_source(same_size_folder)
    first = transform_to_hdf5(src, str(tmp_path / "a.h5"), Scaler("standardize", per_channel=True),
                              stats_out=str(tmp_path / "s.json"), workers=1)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc == json.loads(json.dumps(first["stats"]))
    transform_to_hdf5(src, str(tmp_path / "b.h5"), Scaler.from_stats(doc, per_channel=True), workers=1)
    np.testing.assert_array_equal(stored(tmp_path / "a.h5", "test"), stored(tmp_path / "b.h5", "test"))
    transform_to_hdf5(src, str(tmp_path / "i.h5"), Scaler.preset("imagenet"), dtype="float64", workers=1)
    x = folder_pixels(src.splits["test"].files)
    want = (x - np.array(IMAGENET_MEAN) * 255) / (np.array(IMAGENET_STD) * 255)
    np.testing.assert_allclose(stored(tmp_path / "i.h5", "test"), want, rtol=1e-12)
    with pytest.raises(StatsFileError, match=r"3 channel\(s\), .* has 1"):
        transform_to_hdf5(open_source(same_size_folder, color="gray"), str(tmp_path / "g.h5"),
                          Scaler.from_stats(doc))
    assert not (tmp_path / "g.h5").exists()


def test_nchw_layout_gzip_and_dtypes(mnist_npz, tmp_path):
    path, arrays = mnist_npz
    x = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x)
    run(tmp_path / "rgb.npz", tmp_path / "c.h5", "normalize", layout="nchw", compression="gzip", dtype="float16")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        d = f["all"]["x"]
        assert d.shape == (7, 3, 4, 5) and d.dtype == np.float16 and d.compression == "gzip"
        np.testing.assert_array_equal(d[...], (x / 255).astype(np.float16).transpose(0, 3, 1, 2))
        assert d.chunks[0] == 7


def test_float16_overflow_is_refused(mnist_npz, tmp_path):
    x = np.full((2, 2, 2), 65535, np.uint16)
    np.savez(tmp_path / "w.npz", x=x)
    with pytest.raises(OptionError, match="overflow float16"):
        run(tmp_path / "w.npz", tmp_path / "w.h5", "center", dtype="float16")
    assert not (tmp_path / "w.h5").exists()


def test_different_sizes_need_size_and_nothing_is_written(photo_folder, tmp_path):
    with pytest.raises(SourceError, match=r"images differ in size: .*cat_00\.jpg is 20x14, .*cat_01\.jpg is 16x16; pass --size WxH"):
        run(photo_folder, tmp_path / "o.h5", "normalize")
    assert os.listdir(tmp_path) == ["photos"]
    run(photo_folder, tmp_path / "o.h5", "normalize", size=(10, 8))
    assert stored(tmp_path / "o.h5", "train").shape == (12, 8, 10, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_decoded_once(photo_folder, tmp_path, monkeypatch, workers):
    """The fit split is decoded once: its pixels wait in a raw file beside OUT,
    written by whichever process decoded them, removed at the end."""
    import imgnorm.decode as dec
    import imgnorm.pipeline as pipeline
    calls = tmp_path / "calls"
    calls.mkdir()
    real = dec.decode

    def counting(path, *a, **k):
        (calls / f"{os.getpid()}-{len(os.listdir(calls))}-{os.path.basename(path)}").touch()
        return real(path, *a, **k)

    monkeypatch.setattr(dec, "decode", counting)  # forked workers inherit the patch
    src = open_source(photo_folder, size=(8, 8))
    made = []
    from imgnorm.outputs import OutputSet
    real_scratch = OutputSet.scratch
    monkeypatch.setattr(OutputSet, "scratch", lambda self, beside: made.append(1) or real_scratch(self, beside))
    transform_to_hdf5(src, str(tmp_path / "o.h5"), "standardize", workers=workers)
    decoded = sorted(p.split("-", 2)[2] for p in os.listdir(calls))
    assert decoded == sorted(os.path.basename(f) for f in src.splits["train"].files + src.splits["val"].files)
    assert made == [1]  # the raw file beside OUT
    assert sorted(os.listdir(tmp_path)) == ["calls", "o.h5", "photos"]  # and it is gone
    # the same output as from a run that decodes the fit split twice (--split val writes no cache)
    monkeypatch.setattr(pipeline.PixelCache, "for_plan", classmethod(lambda cls, *a: cls()))
    transform_to_hdf5(src, str(tmp_path / "p.h5"), "standardize", workers=workers)
    for split in ("train", "val"):
        np.testing.assert_array_equal(stored(tmp_path / "p.h5", split), stored(tmp_path / "o.h5", split))


def test_existing_output_untouched_and_force(mnist_npz, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"yesterday")
    with pytest.raises(OptionError, match="exists; pass --force"):
        run(mnist_npz[0], out, "normalize")
    assert out.read_bytes() == b"yesterday"
    run(mnist_npz[0], out, "normalize", force=True)
    assert stored(out, "train").shape == (50, 8, 8, 1)


def test_error_during_write_leaves_nothing(mnist_npz, tmp_path, monkeypatch):
    import imgnorm.store as store
    def boom(self, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(store.H5Writer, "write", boom)
    out = tmp_path / "o.h5"
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        run(mnist_npz[0], out, "standardize", force=True)
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["mnist.npz", "o.h5"]


@pytest.mark.parametrize("kw, text", [
    ({"unit": True, "method": "standardize"}, "--unit does not apply"),
    ({"minmax": True, "method": "center"}, "--minmax does not apply"),
    ({"per_image": True, "stats": "imagenet"}, "cannot take --stats"),
    ({"epsilon": -1.0}, "--epsilon must be"),
    ({"fit_split": "nope"}, "no split 'nope'"),
])
def test_conflicting_options(mnist_npz, tmp_path, kw, text):
    method = kw.pop("method", "standardize")
    with pytest.raises(OptionError, match=text):
        run(mnist_npz[0], tmp_path / "o.h5", method, **kw)


def test_float_source_needs_max_value(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.ones((2, 2, 2), np.float32))
    with pytest.raises(OptionError, match="--max-value"):
        run(tmp_path / "f.npz", tmp_path / "o.h5", "normalize")
    run(tmp_path / "f.npz", tmp_path / "o.h5", "normalize", max_value=2.0)
    assert (stored(tmp_path / "o.h5", "all") == 0.5).all()


def test_scaling_and_per_image_functions_directly(rng):
    x = rng.integers(0, 256, (3, 2, 2, 3), dtype=np.uint8)
    s = Scaling(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 8.0]))
    np.testing.assert_array_equal(s.apply(x, "float64"), (x - np.array([1, 2, 3])) / np.array([2, 4, 8]))
    y, flat = per_image_scaled(x, "center", max_value=255, per_channel=False, dtype="float64")
    np.testing.assert_allclose(y, x - x.reshape(3, -1).mean(axis=1)[:, None, None, None])
    assert flat == 0


@pytest.mark.parametrize("in_dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("out", ["float32", "float16", "float64"])
@pytest.mark.parametrize("kernel", ["c", "numpy"])
def test_lookup_table_path_equals_the_direct_formula(rng, in_dtype, channels, clip, out, kernel, monkeypatch):
    import imgnorm.transforms as tr
    if kernel == "c":
        assert tr._lut_apply is not None, "imgnorm._kernels was not built (needs a C compiler)"
    else:
        monkeypatch.setattr(tr, "_lut_apply", None)
    top = np.iinfo(in_dtype).max
    x = rng.integers(0, top + 1, (40, 50, 40, channels)).astype(in_dtype)  # large enough for the table path
    x[0, 0, 0] = 0
    x[-1, -1, -1] = top  # both ends of the table
    s = Scaling(rng.uniform(0, top, channels), rng.uniform(1, top / 3, channels), clip_rescale=clip)
    fast = s.apply(x, out)
    assert fast.dtype == np.dtype(out) and fast.shape == x.shape
    np.testing.assert_array_equal(fast, s._direct(x, np.dtype(out)))
    odd = x[:, ::2]  # not contiguous: the numpy path
    np.testing.assert_array_equal(s.apply(odd, out), s._direct(odd, np.dtype(out)))


def test_lookup_kernel_refuses_mismatched_buffers():
    from imgnorm._kernels import lut_apply
    x = np.zeros((4, 3), np.uint8)
    table = np.zeros((3, 256), np.float32)
    lut_apply(x, 1, table, 256, 3, np.empty((4, 3), np.float32), 4)
    for args in [(x, 1, table, 256, 3, np.empty((4, 2), np.float32), 4),  # output too small
                 (x, 1, table, 255, 3, np.empty((4, 3), np.float32), 4),  # table size
                 (x, 1, table, 256, 2, np.empty((4, 3), np.float32), 4),  # not whole pixels
                 (x, 3, table, 256, 3, np.empty((4, 3), np.float32), 4),
                 (x, 1, table, 256, 3, np.empty((4, 3), np.float32), 3)]:
        with pytest.raises(ValueError):
            lut_apply(*args)


def test_one_split_written_with_the_train_statistics(same_size_folder, tmp_path):
    src = open_source(same_size_folder)
    result = transform_to_hdf5(src, str(tmp_path / "t.h5"), "standardize", splits=["test"], dtype="float64",
                               workers=1)
    assert result["rows"] == {"test": 6}
    train = folder_pixels(src.splits["train"].files)
    x = folder_pixels(src.splits["test"].files)
    np.testing.assert_allclose(stored(tmp_path / "t.h5", "test"), (x - train.mean()) / train.std(), rtol=1e-12)
    with h5py.File(tmp_path / "t.h5") as f:
        assert list(f) == ["test"]
        stats = json.loads(f.attrs["stats"])  # the applied statistics are stored, though train is not
        assert stats["fit_split"] == "train" and list(stats["splits"]) == ["train", "test"]
        assert stats["splits"]["train"]["global"]["mean"] == pytest.approx(train.mean(), rel=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["same", "t.h5"]


def test_reserved_space_is_trimmed_and_the_file_stays_valid(mnist_npz, tmp_path):
    from imgnorm.pipeline import plan_write
    src = open_source(mnist_npz[0])
    out = tmp_path / "o.h5"
    transform_to_hdf5(src, str(out), "normalize")
    assert os.path.getsize(out) < plan_write(src, Scaler("normalize")).bound - (4 << 20)
    assert os.path.getsize(out) >= (50 + 20) * 8 * 8 * 4  # all the data is there
    with h5py.File(out) as f:
        assert f["train/x"].shape == (50, 8, 8, 1) and f.attrs["method"] == "normalize"


def test_compressed_member_is_inflated_again_not_kept(mnist_npz_compressed, tmp_path, monkeypatch):
    """The fit split of a compressed .npz is read twice (statistics, then
    writing) rather than held: same output as the stored file, no cache."""
    import imgnorm.pipeline as pipeline
    path, arrays = mnist_npz_compressed
    np.savez(tmp_path / "stored.npz", **arrays)
    monkeypatch.setattr(pipeline, "cache_task", lambda *a, **k: pytest.fail("pixels kept"))
    src = open_source(path)
    assert not src.splits["train"].keep_between_passes
    assert pipeline.plan_write(src, Scaler()).cache_bytes == 0
    transform_to_hdf5(src, str(tmp_path / "c.h5"), "standardize", batch_size=7)
    transform_to_hdf5(open_source(tmp_path / "stored.npz"), str(tmp_path / "s.h5"), "standardize")
    x = arrays["x_train"].astype(np.float64)
    for split in ("train", "test"):
        want = ((arrays[f"x_{split}"] - x.mean()) / x.std()).astype(np.float32)[..., None]
        np.testing.assert_array_equal(stored(tmp_path / "c.h5", split), want)
        np.testing.assert_array_equal(stored(tmp_path / "s.h5", split), want)


def test_bad_data_in_the_fit_split_leaves_nothing(tmp_path):
    np.savez(tmp_path / "f.npz", x_train=np.array([[[0.5, np.nan]]] * 4), x_test=np.zeros((2, 1, 2)))
    with pytest.raises(SourceError, match="NaN"):
        transform_to_hdf5(open_source(tmp_path / "f.npz"), str(tmp_path / "o.h5"), "standardize")
    assert sorted(os.listdir(tmp_path)) == ["f.npz"]


@pytest.mark.parametrize("dtype, layout, compression", [
    ("float32", "nhwc", "none"), ("float16", "nhwc", "none"), ("float64", "nhwc", "none"),
    ("float32", "nchw", "none"), ("float32", "nhwc", "lzf"), ("float16", "nchw", "gzip")])
def test_writer_full_chunks_direct_rest_through_hdf5_same_file(tmp_path, monkeypatch, rng, dtype, layout,
                                                                compression):
    """Batches of every alignment against the chunks: what is read back is what was
    written, and the file's bytes are the same whatever the batches were."""
    from imgnorm.store import H5Writer, _Appender, chunk_rows
    direct = []
    real = _Appender._write
    monkeypatch.setattr(_Appender, "_write", lambda self, c: direct.append(self.direct and len(c) == self.n)
                        or real(self, c))
    shape = (16, 16, 3)
    n = 3 * chunk_rows(10 ** 6, shape, dtype) + 5  # three full chunks and a partial one
    x = rng.normal(size=(n,) + shape).astype(dtype)
    files = []
    for sizes in ([n], [7, 200, n], [chunk_rows(n, shape, dtype)] * 4, [1] * 3 + [n]):
        path = tmp_path / f"{len(files)}.h5"
        with H5Writer(str(path), dtype=dtype, layout=layout, compression=compression) as w:
            w.create_split("train", n, shape, labels_dtype=np.int64, files=[f"{i}.jpg" for i in range(n)])
            a = 0
            for size in sizes:
                b = min(n, a + size)
                w.write("train", x[a:b], np.arange(a, b), [f"{i}.jpg" for i in range(a, b)])
                a = b
                if a == n:
                    break
            assert w.finish_split("train") == n
        with h5py.File(path) as f:
            got = f["train/x"][...]
            assert f["train/y"][...].tolist() == list(range(n)) and f["train/files"][-1] == f"{n - 1}.jpg".encode()
        np.testing.assert_array_equal(got if layout == "nhwc" else got.transpose(0, 2, 3, 1), x)
        files.append(path.read_bytes())
    assert all(f == files[0] for f in files)  # the same bytes, however the rows were batched
    assert any(direct) == (compression == "none")  # whole uncompressed chunks go straight to the file


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3), (224, 224, 3), (3, 5, 1), (1024, 1024, 3)])
def test_automatic_batches_are_whole_output_chunks(shape):
    import imgnorm.pipeline as pipeline
    import imgnorm.store as store
    assert pipeline.CHUNK_BYTES == store.CHUNK_BYTES
    for dtype in ("float32", "float64", "float16"):
        rows = pipeline.batch_rows(None, None, shape, np.dtype(dtype).itemsize)
        assert rows % store.chunk_rows(10 ** 9, shape, dtype) == 0
        assert rows * np.prod(shape) * 4 <= pipeline.BATCH_BYTES or rows == store.chunk_rows(10 ** 9, shape, dtype)


_IMPORT_PROBE = """
import os, sys, threading, time
import imgnorm.pipeline as pipeline
from imgnorm.sources import open_source
assert "h5py" not in sys.modules
seen = {"forks during an import": 0}
real_fork = os.fork
def fork():
    if any(t.name == "imgnorm-import" and t.is_alive() for t in threading.enumerate()):
        seen["forks during an import"] += 1
    return real_fork()
os.fork = fork
real = pipeline.fit_pass
def fit_pass(*a, **k):
    deadline = time.monotonic() + 1.5
    while "imgnorm.store" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.001)
    seen["imported during the fit pass"] = "imgnorm.store" in sys.modules
    return real(*a, **k)
pipeline.fit_pass = fit_pass
pipeline.transform_to_hdf5(open_source(sys.argv[1]), sys.argv[2], "standardize", workers=int(sys.argv[3]))
print(seen["imported during the fit pass"], seen["forks during an import"])
"""


@pytest.mark.parametrize("kind, workers", [("npz", 2), ("folder", 2), ("folder", 1)])
def test_h5py_is_imported_beside_the_fit_pass_and_never_during_a_fork(kind, workers, mnist_npz_compressed,
                                                                     same_size_folder, tmp_path):
    """h5py is imported in a thread while the fit split is read; the worker
    processes fork before that thread starts, so no fork happens while another
    thread holds an import lock (which the child would never see released)."""
    import subprocess
    import sys
    src = mnist_npz_compressed[0] if kind == "npz" else same_size_folder
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(src), str(tmp_path / "o.h5"), str(workers)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["True", "0"]
