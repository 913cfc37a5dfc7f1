"""`imgnorm normalize|center|standardize` and `imgnorm inspect` from the command line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgnorm.cli import cli
from imgnorm.store import read_h5_info


@pytest.fixture
def runner():
    return CliRunner()


def test_standardize_npz_end_to_end(runner, mnist_npz, tmp_path):
    path, arrays = mnist_npz
    out = tmp_path / "o.h5"
    r = runner.invoke(cli, ["standardize", str(path), "-o", str(out), "--stats-out", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "train 50, test 20" in r.output
    x = arrays["x_train"].astype(np.float64)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["train/x"][...], ((x - x.mean()) / x.std()).astype(np.float32)[..., None])
        assert json.loads(f.attrs["options"])["fit_split"] == "train"
    assert json.loads((tmp_path / "s.json").read_text())["splits"]["test"]["images"] == 20


@pytest.mark.parametrize("cmd", [["normalize"], ["center", "--unit"], ["standardize", "--per-channel"],
                                 ["standardize", "--per-image", "--clip-rescale"], ["normalize", "--minmax"]])
def test_every_method_on_a_folder(runner, same_size_folder, tmp_path, cmd):
    out = tmp_path / "o.h5"
    r = runner.invoke(cli, [*cmd, str(same_size_folder), "-o", str(out), "--workers", "2", "-q"])
    assert r.exit_code == 0, r.output
    info = read_h5_info(out)
    assert info["splits"]["train"]["shape"] == [12, 12, 16, 3] and info["attrs"]["method"] == cmd[0]


def test_stats_file_round_trip(runner, same_size_folder, tmp_path):
    s = tmp_path / "s.json"
    assert runner.invoke(cli, ["stats", str(same_size_folder), "--split", "train", "-o", str(s)]).exit_code == 0
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert runner.invoke(cli, ["standardize", str(same_size_folder), "-o", str(a)]).exit_code == 0
    r = runner.invoke(cli, ["standardize", str(same_size_folder / "test"), "--stats", str(s), "-o", str(b)])
    assert r.exit_code == 0, r.output
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        np.testing.assert_array_equal(fa["test/x"][...], fb["all/x"][...])


@pytest.mark.parametrize("args, code, text", [
    (["--unit"], 2, "No such option '--unit'"),
    (["--per-image", "--fit-split", "train"], 2, "cannot take --fit-split"),
    (["--per-image", "--stats", "imagenet"], 2, "cannot take --stats"),
    (["--dtype", "int8"], 2, "'int8' is not one of"),
    (["--layout", "hwc"], 2, "'hwc' is not one of"),
    (["--stats", "missing.json"], 1, "missing.json: no such stats file"),
    (["--stats", "imagenet"], 1, "--stats imagenet is for RGB data; the data has 1 channel"),
])
def test_bad_options(runner, mnist_npz, tmp_path, args, code, text):
    r = runner.invoke(cli, ["standardize", str(mnist_npz[0]), "-o", str(tmp_path / "o.h5"), *args])
    assert r.exit_code == code and text in r.output, r.output
    assert not (tmp_path / "o.h5").exists()


def test_missing_output_folder(runner, mnist_npz, tmp_path):
    r = runner.invoke(cli, ["normalize", str(mnist_npz[0]), "-o", str(tmp_path / "no" / "o.h5")])
    assert r.exit_code == 2  # wrong usage, found before any work
    assert r.output == (f"Error: Invalid value for '-o': {tmp_path / 'no' / 'o.h5'}: folder {tmp_path / 'no'} does "
                        "not exist; create it first\n")


def test_mixed_sizes_without_size(runner, photo_folder, tmp_path):
    r = runner.invoke(cli, ["normalize", str(photo_folder), "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and "images differ in size" in r.output and "--size WxH" in r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output


def test_inspect_h5_checks_stored_values(runner, same_size_folder, tmp_path):
    out = tmp_path / "o.h5"
    runner.invoke(cli, ["standardize", str(same_size_folder), "-o", str(out), "--layout", "nchw", "-q"])
    r = runner.invoke(cli, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    with h5py.File(out, "r") as f:
        x = f["test/x"][...].astype(np.float64)
    assert doc["check"]["test"]["global"]["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert doc["check"]["test"]["per_channel"]["std"] == pytest.approx(x.std(axis=(0, 2, 3)), rel=1e-12)
    assert doc["check"]["train"]["global"]["std"] == pytest.approx(1, rel=1e-6)
    text = runner.invoke(cli, ["inspect", str(out), "--plot", str(tmp_path / "h.png")]).output
    assert "method: standardize" in text and "classes (2): a, b" in text and "/train/y" in text
    im = Image.open(tmp_path / "h.png")
    assert im.format == "PNG" and im.size == (800, 2 * 280)  # a panel per split
    assert len(set(np.asarray(im.convert("RGB")).reshape(-1, 3)[:, 0].tolist())) > 2


def test_inspect_stats_document_and_sources(runner, photo_folder, mnist_npz, tmp_path):
    s = tmp_path / "s.json"
    runner.invoke(cli, ["stats", str(mnist_npz[0]), "-o", str(s)])
    r = runner.invoke(cli, ["inspect", str(s)])
    assert r.exit_code == 0 and "split train: 50 images" in r.output
    r = runner.invoke(cli, ["inspect", str(photo_folder), "--json"])
    doc = json.loads(r.stdout)
    assert doc["class_names"] == ["cat", "dog", "owl"]
    assert doc["splits"]["train"]["per_class"] == {"cat": 4, "dog": 3, "owl": 5}
    assert doc["splits"]["train"]["distinct_sizes"] == 2
    assert doc["splits"]["train"]["smallest"] == [16, 16] and doc["splits"]["train"]["largest"] == [20, 14]
    assert doc["splits"]["val"]["modes"] == {"RGB": 6}
    r = runner.invoke(cli, ["inspect", str(mnist_npz[0])])
    assert "split test: 20 images of 8x8x1 uint8, labelled" in r.output


def test_inspect_bad_files(runner, tmp_path):
    r = runner.invoke(cli, ["inspect", str(tmp_path / "missing.h5")])
    assert r.exit_code == 1 and r.output == f"Error: {tmp_path / 'missing.h5'}: no such file\n"
    (tmp_path / "x.h5").write_bytes(b"nope")
    r = runner.invoke(cli, ["inspect", str(tmp_path / "x.h5")])
    assert r.exit_code == 1 and "not a readable HDF5 file" in r.output
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["a"] = 1
    r = runner.invoke(cli, ["inspect", str(tmp_path / "y.h5")])
    assert r.exit_code == 1 and "not written by imgnorm" in r.output
