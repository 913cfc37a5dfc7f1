"""`-o out.zarr`: a Zarr v3 store with the HDF5 file's layout, the same values
bit for bit, committed whole or not at all."""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import imgnorm
from imgnorm.cli import cli
from imgnorm.pipeline import transform_to_hdf5
from imgnorm.zarr_store import decode_names

from conftest import write_jpeg

zarr = pytest.importorskip("zarr")


def _same_as_h5(h5, store):
    """Every array of the HDF5 file equals the store's bit for bit; the attributes are the same values."""
    z = zarr.open_group(str(store), mode="r")
    with h5py.File(h5, "r") as f:
        assert sorted(f) == sorted(name for name, _ in z.groups())
        for split in f:
            for key in f[split]:
                a, b = f[split][key][...], z[split][key][...]
                if key == "files":
                    assert [os.fsdecode(v) for v in a] == decode_names(b)
                else:
                    assert a.dtype == b.dtype and a.shape == b.shape, (split, key)
                    assert a.tobytes() == b.tobytes(), (split, key)
            assert f[split]["x"].chunks == z[split]["x"].chunks
        h5_attrs = {k: (json.loads(v) if k in ("stats", "options", "class_names", "skipped") else v)
                    for k, v in f.attrs.items()}
        assert h5_attrs == z.attrs.asdict()


@pytest.mark.parametrize("args", [[], ["--per-channel", "--layout", "nchw", "--compression", "gzip"],
                                  ["--per-image", "--dtype", "float16"]])
def test_a_zarr_store_holds_the_hdf5_files_arrays_and_attributes(photo_folder, tmp_path, args):
    r1 = CliRunner().invoke(cli, ["standardize", str(photo_folder), "--size", "8x6", "-o", str(tmp_path / "a.h5"),
                                  "-q", *args])
    r2 = CliRunner().invoke(cli, ["standardize", str(photo_folder), "--size", "8x6", "-o", str(tmp_path / "a.zarr"),
                                  "-q", *args])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    _same_as_h5(tmp_path / "a.h5", tmp_path / "a.zarr")
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "a.zarr", "photos"]  # no temporary left


def test_mnist_arrays_and_labels_match(mnist_npz, tmp_path):
    path, arrays = mnist_npz
    x, y = arrays["x_train"], arrays["y_train"]
    transform_to_hdf5(imgnorm.open_source(path), str(tmp_path / "m.h5"), "normalize")
    transform_to_hdf5(imgnorm.open_source(path), str(tmp_path / "m.zarr"), "normalize")
    _same_as_h5(tmp_path / "m.h5", tmp_path / "m.zarr")
    z = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    np.testing.assert_array_equal(z["train/y"][...], y)
    np.testing.assert_array_equal(z["train/x"][...][..., 0], x.astype(np.float32) / 255)


def test_names_that_are_not_utf8_are_kept_as_bytes(tmp_path, rng):
    root = tmp_path / "src"
    write_jpeg(root / "a" / "ok.jpg", rng)
    bad = os.fsdecode(b"caf\xe9.jpg")
    write_jpeg(root / "a" / bad, rng)
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(cli, ["normalize", str(root), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    z = zarr.open_group(str(out), mode="r")
    files = z["all/files"]
    assert files.attrs["encoding"] == "bytes" and files.dtype == np.uint8
    assert sorted(decode_names(files[...])) == sorted([os.path.join("a", bad), os.path.join("a", "ok.jpg")])


def test_an_existing_store_is_replaced_only_with_force_and_only_if_it_is_a_store(mnist_npz, tmp_path):
    path = str(mnist_npz[0])
    out = tmp_path / "m.zarr"
    assert CliRunner().invoke(cli, ["center", path, "-o", str(out), "-q"]).exit_code == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(out), "-q"])
    assert r.exit_code == 2 and "--force" in r.output
    assert zarr.open_group(str(out), mode="r").attrs["method"] == "center"
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(out), "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(out), mode="r").attrs["method"] == "standardize"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    # a folder that is not a Zarr store is never replaced, even with --force
    folder = tmp_path / "keep.zarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(folder), "-q", "--force"])
    assert r.exit_code == 2 and "not a Zarr store" in r.output
    assert os.listdir(folder) == ["precious.txt"]
    plain = tmp_path / "file.zarr"
    plain.write_text("a file")
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(plain), "-q", "--force"])
    assert r.exit_code == 2 and plain.read_text() == "a file"
    assert not [n for n in os.listdir(tmp_path) if n.endswith("imgnorm-tmp")]


def test_a_failed_run_leaves_no_store_and_no_temporary(tmp_path, rng):
    root = tmp_path / "src"
    write_jpeg(root / "a" / "1.jpg", rng)
    (root / "a" / "2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(cli, ["normalize", str(root), "-o", str(out), "-q"])
    assert r.exit_code == 1 and "2.jpg" in r.output
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_a_stale_temporary_store_of_a_killed_run_is_removed_by_the_next(mnist_npz, tmp_path):
    path = str(mnist_npz[0])
    out = tmp_path / "m.zarr"
    # a run killed with SIGKILL: its temporary store stays, its lock is gone
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.zarr.{child.stdout.strip()}.0123abcd.imgnorm-tmp"
    (stale / "train" / "x").mkdir(parents=True)
    (stale / "train" / "x" / "c").write_bytes(b"\0" * 100)
    # and one of a run that is still working (holds its lock): left alone
    live = tmp_path / f".m.zarr.{os.getpid()}.89abcdef.imgnorm-tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert CliRunner().invoke(cli, ["normalize", path, "-o", str(out), "-q"]).exit_code == 0
        assert not stale.exists() and live.exists()
    finally:
        os.close(fd)
        shutil.rmtree(live)


def test_inspect_describes_a_store_and_check_finds_a_missing_chunk(mnist_npz, tmp_path):
    path = str(mnist_npz[0])
    out = tmp_path / "m.zarr"
    assert CliRunner().invoke(cli, ["standardize", path, "-o", str(out), "-q", "--batch-size", "7"]).exit_code == 0
    r = CliRunner().invoke(cli, ["inspect", str(out), "--check", "-q"])
    assert r.exit_code == 0, r.output
    assert "store: " in r.output and "/train/x  shape (50, 8, 8, 1)" in r.output
    r = CliRunner().invoke(cli, ["inspect", str(out), "--json", "-q"])
    facts = json.loads(r.output)
    assert facts["format"] == "zarr" and facts["missing"] == []
    assert abs(facts["check"]["train"]["global"]["mean"]) < 1e-6
    shutil.rmtree(out / "test" / "x" / "c")  # every chunk of test/x
    r = CliRunner().invoke(cli, ["inspect", str(out), "--check", "-q"])
    assert r.exit_code == 1 and "test/x: 1 of 1 chunk(s) missing" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["inspect", str(out), "-q"])
    assert r.exit_code == 0 and "INCOMPLETE" in r.output


def test_zarr_only_options_and_a_missing_extra_are_usage_errors(mnist_npz, tmp_path, monkeypatch):
    path = str(mnist_npz[0])
    r = CliRunner().invoke(cli, ["normalize", path, "-o", str(tmp_path / "a.zarr"), "--compression", "lzf"])
    assert r.exit_code == 2 and "gzip" in r.output
    r = CliRunner().invoke(cli, ["whiten", path, "-o", str(tmp_path / "a.zarr")])
    assert r.exit_code == 2 and ".h5" in r.output
    r = CliRunner().invoke(cli, ["inspect", path, "--check"])
    assert r.exit_code == 2
    real_import = builtins.__import__

    def no_zarr(name, *args, **kwargs):
        if name.split(".")[0] == "zarr":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    import importlib.util
    real_find_spec = importlib.util.find_spec

    # not installed: refused before anything is made
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zarr" else
                        real_find_spec(name, *a))
    r = CliRunner().invoke(cli, ["normalize", path, "-o", str(tmp_path / "a.zarr")])
    assert r.exit_code == 2 and "pip install 'imgnorm[zarr]'" in r.output
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    # found but not importable (a broken install): refused where the store is made, nothing left
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    monkeypatch.setattr(builtins, "__import__", no_zarr)
    r = CliRunner().invoke(cli, ["normalize", path, "-o", str(tmp_path / "a.zarr")])
    assert r.exit_code == 2 and "pip install 'imgnorm[zarr]'" in r.output
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_scaler_is_read_back_from_a_store(mnist_npz, tmp_path):
    path, arrays = mnist_npz
    x = arrays["x_train"]
    out = tmp_path / "m.zarr"
    transform_to_hdf5(imgnorm.open_source(path), str(out), imgnorm.Scaler("standardize", clip_rescale=True))
    scaler = imgnorm.Scaler.from_hdf5(str(out))
    z = zarr.open_group(str(out), mode="r")
    assert scaler.transform(x[..., None]).tobytes() == z["train/x"][...].tobytes()


def test_a_store_is_written_and_checked_as_root_and_as_an_unprivileged_user(user, world_tmp, rng):
    from conftest import open_to_all, run_imgnorm

    np.savez(world_tmp / "m.npz", x_train=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8),
             y_train=rng.integers(0, 3, 40).astype(np.uint8))
    open_to_all(world_tmp)
    out = world_tmp / "m.zarr"
    r = run_imgnorm("standardize", world_tmp / "m.npz", "-o", out, "-q", user=user)
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)  # the temporary's private mode is not kept
    r = run_imgnorm("inspect", out, "--check", "-q", user=user)
    assert r.returncode == 0, r.stderr
    os.chmod(world_tmp, 0o755)  # nobody cannot create beside it any more: refused before any work
    r = run_imgnorm("standardize", world_tmp / "m.npz", "-o", world_tmp / "n.zarr", "-q", user=user)
    if user == "nobody":
        assert r.returncode == 2 and "Permission denied" in r.stderr and "Traceback" not in r.stderr
    assert sorted(n for n in os.listdir(world_tmp) if "imgnorm-tmp" in n) == []


def test_a_folder_that_appears_during_the_run_is_never_replaced(tmp_path):
    from imgnorm.errors import OutputError
    from imgnorm.outputs import OutputSet

    target = tmp_path / "o.zarr"
    with OutputSet() as outputs:
        out = outputs.add(str(target), "-o", seekable=True, directory="zarr")
        (tmp_path / os.path.basename(out.tmp) / "zarr.json").write_text("{}")
        target.mkdir()  # another run, or the user, made it meanwhile
        (target / "theirs").write_text("keep")
        with pytest.raises(OutputError, match="appeared while imgnorm was running"):
            outputs.commit()
    assert os.listdir(target) == ["theirs"]
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]


def test_with_force_a_failed_commit_puts_the_old_store_back(tmp_path):
    from imgnorm.errors import OutputError
    from imgnorm.outputs import OutputSet

    target = tmp_path / "o.zarr"
    target.mkdir()
    (target / "zarr.json").write_text("old")
    with OutputSet(force=True) as outputs:
        out = outputs.add(str(target), "-o", seekable=True, directory="zarr")
        (tmp_path / os.path.basename(out.tmp) / "zarr.json").write_text("new")
        doc = outputs.add(str(tmp_path / "s.json"), "--stats-out")
        outputs.set_content(doc, b"{}")
        (tmp_path / "s.json").mkdir()  # the second output cannot be put in place
        with pytest.raises(OutputError):
            outputs.commit()
    assert (target / "zarr.json").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "s.json"]


@pytest.mark.parametrize("dtype,batch", [("float32", 7), ("float16", 3), ("float64", 64)])
def test_whole_chunks_written_as_files_read_back_as_zarr_wrote_them(mnist_npz, tmp_path, monkeypatch, dtype, batch):
    import imgnorm.store

    path = mnist_npz[0]
    monkeypatch.setattr(imgnorm.store, "CHUNK_BYTES", 4 * 8 * 8 * np.dtype(dtype).itemsize)  # 4 rows a chunk
    src = imgnorm.open_source(path)
    transform_to_hdf5(src, str(tmp_path / "a.h5"), "standardize", dtype=dtype, batch_size=batch, layout="nchw")
    transform_to_hdf5(src, str(tmp_path / "a.zarr"), "standardize", dtype=dtype, batch_size=batch, layout="nchw")
    _same_as_h5(tmp_path / "a.h5", tmp_path / "a.zarr")
    z = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert z["train/x"].chunks[0] == 4 and z["train/x"].shape[0] == 50  # 12 whole chunks and a partial one
    assert z["train/x"].nchunks_initialized == 13
    # and zarr's own reader agrees row by row with what zarr itself writes
    own = zarr.create_array(str(tmp_path / "own.zarr"), shape=z["train/x"].shape, chunks=z["train/x"].chunks,
                            dtype=dtype, fill_value=np.nan, compressors=None, zarr_format=3)
    own[...] = z["train/x"][...]
    for i in range(13):
        key = f"c/{i}/0/0/0"
        assert (tmp_path / "own.zarr" / key).read_bytes() == (tmp_path / "a.zarr" / "train" / "x" / key).read_bytes()


def test_a_store_that_would_not_fit_on_the_disk_is_refused_before_any_pixel_is_read(mnist_npz, tmp_path,
                                                                                   monkeypatch):
    import imgnorm.outputs
    from imgnorm.sources import ArraySplit

    real = shutil.disk_usage
    monkeypatch.setattr(imgnorm.outputs.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))  # 1 MiB free
    read = []
    monkeypatch.setattr(ArraySplit, "read", lambda self, *a, **k: read.append(1))
    r = CliRunner().invoke(cli, ["standardize", str(mnist_npz[0]), "-o", str(tmp_path / "m.zarr")])
    assert r.exit_code == 1 and "not enough disk space" in r.output and "1.0 MiB free" in r.output, r.output
    assert read == [] and os.listdir(tmp_path) == ["mnist.npz"]


def test_every_missing_extra_is_one_error_class(mnist_npz, tmp_path, monkeypatch):
    import importlib.util

    from imgnorm.cluster import _need_dask
    from imgnorm.decode16 import MissingExtraError as from_decode16

    assert from_decode16 is imgnorm.MissingExtraError and issubclass(imgnorm.MissingExtraError,
                                                                      imgnorm.OptionError)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zarr" else
                        real_find_spec(name, *a))
    with pytest.raises(imgnorm.MissingExtraError, match=r"imgnorm\[zarr\]"):
        transform_to_hdf5(imgnorm.open_source(mnist_npz[0]), str(tmp_path / "m.zarr"))
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.split(".")[0] == "distributed" else real_import(name, *a, **k))
    with pytest.raises(imgnorm.MissingExtraError, match=r"imgnorm\[dask\]"):
        _need_dask()


def test_inspect_refuses_a_store_whose_labels_were_changed(mnist_npz, tmp_path):
    out = tmp_path / "m.zarr"
    assert CliRunner().invoke(cli, ["normalize", str(mnist_npz[0]), "-o", str(out), "-q"]).exit_code == 0
    g = zarr.open_group(str(out / "train"), mode="r+")
    del g["y"]
    g.create_array("y", shape=(3,), dtype="float32")  # not one integer label per image
    r = CliRunner().invoke(cli, ["inspect", str(out), "-q"])
    assert r.exit_code == 1 and "train/y is not one integer label per image" in r.output and "Traceback" not in r.output
