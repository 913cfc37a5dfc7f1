"""What users trust imgnorm with, run as the real command: folders it cannot
read, run as root and as an unprivileged user (root reads mode-000 folders,
so the permission cases run as nobody when the tests run as root)."""

from __future__ import annotations

import json
import os

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
