"""What users trust imgnorm with, run as the real command: folders it cannot
read, run as root and as an unprivileged user (root reads mode-000 folders,
so the permission cases run as nobody when the tests run as root)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import open_to_all, run_imgnorm, write_jpeg


@pytest.fixture
def classes(world_tmp, rng):
    """world_tmp/src/train/{a,b,c}: two images each; world_tmp/src/val/a: one."""
    for cls in "abc":
        for i in range(2):
            write_jpeg(world_tmp / "src" / "train" / cls / f"{i}.jpg", rng)
    write_jpeg(world_tmp / "src" / "val" / "a" / "v.jpg", rng)
    open_to_all(world_tmp)
    return world_tmp / "src"


@pytest.mark.parametrize("where", ["train/b", "train", "."])
def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(classes, where):
    folder = (classes / where).resolve()
    os.chmod(folder, 0)
    out = run_imgnorm("stats", classes, user="nobody")
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == [f"Error: {folder if where != '.' else classes}: cannot read folder "
                                       "(Permission denied); fix its permissions, or pass --on-error skip to "
                                       "leave it out"]


def test_a_class_folder_that_cannot_be_listed_is_skipped_and_recorded(classes):
    os.chmod(classes / "train" / "b", 0)
    out = run_imgnorm("stats", classes, "--on-error", "skip", "--json", user="nobody")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [f"skipped {classes / 'train' / 'b'}: cannot read folder (Permission denied)"]
    doc = json.loads(out.stdout)
    assert doc["splits"]["train"]["images"] == 4
    assert doc["skipped"] == [{"file": "train/b", "reason": "cannot read folder (Permission denied)"}]
    # the class stays in the class list, so labels mean the same with or without the folder
    out = run_imgnorm("normalize", classes, "--on-error", "skip", "-o", classes.parent / "o.h5", user="nobody")
    assert out.returncode == 0, out.stderr
    import h5py
    with h5py.File(classes.parent / "o.h5") as f:
        assert json.loads(f.attrs["class_names"]) == ["a", "b", "c"]
        assert f["train/y"][...].tolist() == [0, 0, 2, 2]
        assert "train/b" in f.attrs["skipped"]


def test_file_names_that_are_not_utf8_work_in_every_command(world_tmp, rng, user):
    latin = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes, not UTF-8
    write_jpeg(world_tmp / "src" / "c" / latin, rng)
    write_jpeg(world_tmp / "src" / "c" / "plain.jpg", rng)
    (world_tmp / "src" / "c" / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not an image")
    open_to_all(world_tmp)
    src = world_tmp / "src"
    runs = [("stats", src), ("inspect", src)] + [
        (cmd, src, "--size", "8x8", "-o", world_tmp / f"{cmd}.h5") for cmd in ("normalize", "center", "standardize")]
    for args in runs:
        out = run_imgnorm(*args, "--on-error", "skip", user=user) if args[0] != "inspect" else \
            run_imgnorm(*args, user=user)
        assert out.returncode == 0, (args, out.stderr)
        assert "bug" not in out.stderr and "Traceback" not in out.stderr
        assert "bad\\xff.jpg" in out.stderr + out.stdout  # named, as the terminal can show it
    import h5py
    with h5py.File(world_tmp / "standardize.h5") as f:
        assert f["all/files"][...].tolist() == [b"c/caf\xe9.jpg", b"c/plain.jpg"]  # the exact bytes
        assert f["all/files"].attrs["encoding"] == "bytes"
        assert json.loads(f.attrs["skipped"]) == [{"file": os.fsdecode(b"c/bad\xff.jpg"),
                                                   "reason": json.loads(f.attrs["skipped"])[0]["reason"]}]
    out = run_imgnorm("inspect", world_tmp / "standardize.h5", user=user)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("arrays, text", [
    ({"x_train": np.zeros((5, 0, 8), np.uint8)}, "x_train: images of 8x0 pixels"),
    ({"x_train": np.zeros((5, 4, 4), np.uint8), "y_train": np.eye(5)}, "y_train: labels of shape (5, 5) look one-hot"),
    ({"x_train": np.zeros((5, 4, 4), np.uint8), "y_train": np.array(list("abcde"))}, "y_train: labels are strings"),
    ({"x_train": np.zeros((5, 4, 4), np.uint8), "y_train": np.array([0, 1, np.nan, 1, 0])}, "y_train: label 2 is nan"),
])
def test_bad_arrays_end_in_one_line_exit_1(tmp_path, arrays, text):
    np.savez(tmp_path / "d.npz", **arrays)
    for args in (["stats", tmp_path / "d.npz"], ["normalize", tmp_path / "d.npz", "-o", tmp_path / "o.h5"],
                 ["inspect", tmp_path / "d.npz"]):
        out = run_imgnorm(*args)
        assert out.returncode == 1, out.stderr
        assert out.stderr.startswith(f"Error: {tmp_path / 'd.npz'}:{text}") and out.stderr.count("\n") == 1
    assert not (tmp_path / "o.h5").exists()
