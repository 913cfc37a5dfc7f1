"""The command line in the user's world: pipes (-o -, --stats -), IMGNORM_
variables, --json summaries, --dry-run, progress in logs, help text, the same
bytes from two runs, known constants and channel order, plots, other readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgnorm.cli import cli
from imgnorm.transforms import PRESETS

from conftest import run_imgnorm, write_jpeg


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def npz(tmp_path, rng):
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8),
             y_train=rng.integers(0, 3, 40).astype(np.uint8), x_test=rng.integers(0, 256, (9, 6, 5, 3), dtype=np.uint8))
    return tmp_path / "d.npz"


@pytest.fixture
def folder(tmp_path, rng):
    for split, n in (("train", 5), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write_jpeg(tmp_path / "f" / split / cls / f"{i}.jpg", rng, size=(30 + 3 * i, 20 + i))
    return tmp_path / "f"


# ------------------------------------------------------------ pipes and the environment


def test_dash_writes_documents_to_stdout_and_reads_stats_from_stdin(npz, tmp_path):
    out = run_imgnorm("stats", npz, "-o", "-")
    assert out.returncode == 0 and json.loads(out.stdout)["format"] == "imgnorm.stats"
    assert not (tmp_path / "-").exists()
    piped = subprocess.run(f"{sys.executable} -m imgnorm stats {npz} -o - | {sys.executable} -m imgnorm standardize "
                           f"{npz} --stats - -o {tmp_path / 'o.h5'} --json", shell=True, capture_output=True,
                           text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["splits"]["train"]["images"] == 40
    out = run_imgnorm("standardize", npz, "-o", "-")
    assert out.returncode == 2 and "cannot write HDF5 output to standard output" in out.stderr


def test_options_come_from_imgnorm_variables(npz, folder, tmp_path):
    env = dict(os.environ, IMGNORM_STATS_SPLIT="test", IMGNORM_DTYPE="float64")
    out = run_imgnorm("stats", npz, "--json", env=env)
    assert list(json.loads(out.stdout)["splits"]) == ["test"]
    assert run_imgnorm("normalize", npz, "-o", tmp_path / "o.h5", env=env).returncode == 0
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["train/x"].dtype == np.float64  # IMGNORM_DTYPE; IMGNORM_STATS_SPLIT is for stats only
    env = dict(os.environ, IMGNORM_WORKERS="0")
    out = run_imgnorm("stats", folder, env=env)
    assert out.returncode == 2 and "--workers" in out.stderr  # checked like the flag
    env = dict(os.environ, IMGNORM_FORCE="1", IMGNORM_SIZE="16")
    out = run_imgnorm("normalize", folder, "-o", tmp_path / "o.h5", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["splits"]["train"]["shape"] == [10, 16, 16, 3]


def test_json_summary_of_a_write(npz, tmp_path):
    out = run_imgnorm("standardize", npz, "--per-channel", "-o", tmp_path / "o.h5", "--stats-out",
                      tmp_path / "s.json", "--json", "--layout", "nchw")
    summary = json.loads(out.stdout)
    assert summary["output"] == str(tmp_path / "o.h5") and summary["bytes"] == os.path.getsize(tmp_path / "o.h5")
    assert summary["splits"] == {"train": {"images": 40, "shape": [40, 3, 6, 5]},
                                 "test": {"images": 9, "shape": [9, 3, 6, 5]}}
    assert summary["method"] == "standardize" and summary["fit_split"] == "train" and len(summary["offset"]) == 3
    with h5py.File(tmp_path / "o.h5") as f:
        assert json.loads(f.attrs["options"])["scale"] == summary["scale"]


def test_dry_run_reads_no_pixel_and_writes_nothing(folder, tmp_path, monkeypatch, runner):
    import imgnorm.decode as dec
    monkeypatch.setattr(dec, "decode", lambda *a, **k: pytest.fail("a pixel was decoded"))
    before = sorted(os.listdir(tmp_path))
    r = runner.invoke(cli, ["standardize", str(folder), "--size", "32", "-o", str(tmp_path / "o.h5"), "--dry-run",
                            "--stats-out", str(tmp_path / "s.json"), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["dry_run"] and plan["splits"]["train"] == {"images": 10, "shape": [10, 32, 32, 3]}
    assert plan["fits"] and plan["fit_split"] == "train" and plan["max_bytes"] > 12 * 32 * 32 * 3 * 4
    r = runner.invoke(cli, ["stats", str(folder), "--dry-run"])
    assert r.exit_code == 0 and "split val: 4 images" in r.output
    assert sorted(os.listdir(tmp_path)) == before
    r = runner.invoke(cli, ["normalize", str(folder), "--size", "8", "-o", str(tmp_path / "no" / "o.h5"), "--dry-run"])
    assert r.exit_code == 2 and "does not exist" in r.output  # the outputs are still checked


def test_help_summaries_are_whole(runner):
    text = runner.invoke(cli, ["--help"], terminal_width=80).output
    assert "..." not in text.split("Commands:")[1]  # no summary cut off
    for cmd in ("stats", "normalize", "center", "standardize", "inspect"):
        assert cmd in text
        assert runner.invoke(cli, [cmd, "--help"]).exit_code == 0


def _run_bytes(tmp_path, name, *args):
    i = len(list(tmp_path.glob("o*.h5")))
    out = subprocess.run([sys.executable, "-m", "imgnorm", "standardize", name, "--size", "12x10", "-o", f"o{i}.h5",
                          "--stats-out", f"s{i}.json", "-q", *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return (tmp_path / f"o{i}.h5").read_bytes(), (tmp_path / f"s{i}.json").read_bytes()


def test_the_same_run_gives_the_same_bytes_however_the_source_is_named(folder, tmp_path):
    """The source is recorded as given (normalized, not made absolute), so a Makefile
    gives the same bytes in any checkout; --source-name records a name of one's choosing."""
    rel = os.path.relpath(folder, tmp_path)
    first = _run_bytes(tmp_path, rel, "--batch-size", "8")
    for name, batch, workers in ((rel + "/", "3", "1"), ("./" + rel, "5", "2"), (rel, "1", "2")):
        assert _run_bytes(tmp_path, name, "--batch-size", batch, "--workers", workers) == first
    named = _run_bytes(tmp_path, str(folder), "--source-name", "photos")
    assert _run_bytes(tmp_path, rel + "/", "--source-name", "photos") == named


# ------------------------------------------------------------ constants and channel order


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_mean_and_std_equal_the_normalize_formula_bit_for_bit(npz, tmp_path, runner, dtype):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    r = runner.invoke(cli, ["standardize", str(npz), "--mean", ",".join(map(str, mean)), "--std",
                            ",".join(map(str, std)), "-o", str(tmp_path / "o.h5"), "--dtype", dtype])
    assert r.exit_code == 0, r.output
    x = np.load(npz)["x_train"]
    want = ((x / 255.0 - np.array(mean)) / np.array(std)).astype(dtype)  # ToTensor + Normalize, in float64
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["train/x"][...], want)
    r = runner.invoke(cli, ["standardize", str(npz), "--mean", "0.5", "--std", "0.5", "-o", str(tmp_path / "i.h5")])
    with h5py.File(tmp_path / "i.h5") as f:  # one value for every channel: Inception's [-1, 1]
        np.testing.assert_array_equal(f["train/x"][...], ((x / 255.0 - 0.5) / 0.5).astype(np.float32))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets(npz, tmp_path, runner, preset):
    r = runner.invoke(cli, ["standardize", str(npz), "--stats", preset, "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 0, r.output
    mean, std = (np.array(v) for v in PRESETS[preset])
    x = np.load(npz)["x_test"]
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["test/x"][...], ((x / 255.0 - mean) / std).astype(np.float32))
    if preset == "inception":  # values in [-1, 1]
        assert ((x / 255.0 - mean) / std).min() >= -1 and ((x / 255.0 - mean) / std).max() <= 1


def test_channel_order_bgr(npz, tmp_path, runner):
    x = np.load(npz)["x_train"]
    r = runner.invoke(cli, ["stats", str(npz), "--channel-order", "bgr", "--json"])
    rgb = json.loads(runner.invoke(cli, ["stats", str(npz), "--json"]).stdout)["splits"]["train"]["per_channel"]
    bgr = json.loads(r.stdout)["splits"]["train"]["per_channel"]
    assert bgr["mean"] == rgb["mean"][::-1]  # the statistics follow the channels
    r = runner.invoke(cli, ["center", str(npz), "--stats", "caffe", "--channel-order", "bgr", "-o",
                            str(tmp_path / "c.h5")])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "c.h5") as f:  # Keras' "caffe" preprocessing: BGR, minus the ImageNet mean
        np.testing.assert_allclose(f["train/x"][...], x[..., ::-1] - np.array([103.939, 116.779, 123.68]),
                                   rtol=0, atol=1e-4)
    r = runner.invoke(cli, ["standardize", str(npz), "--stats", "imagenet", "--channel-order", "bgr", "-o",
                            str(tmp_path / "b.h5")])
    with h5py.File(tmp_path / "b.h5") as f:
        mean, std = (np.array(v)[::-1] for v in PRESETS["imagenet"])
        np.testing.assert_array_equal(f["train/x"][...], ((x[..., ::-1] / 255.0 - mean) / std).astype(np.float32))
    gray = tmp_path / "g.npz"
    np.savez(gray, x=x[..., 0])
    r = runner.invoke(cli, ["stats", str(gray), "--channel-order", "bgr"])
    assert r.exit_code == 2 and "reverses three colour channels" in r.output


def test_mean_and_std_are_checked(npz, tmp_path, runner):
    for args, text in ((["--mean", "0.5"], "give --mean and --std together"),
                       (["--mean", "a,b", "--std", "1"], "is not a comma list of numbers"),
                       (["--mean", "0.5,0.5", "--std", "0.1,0.1"], "--mean/--std give 2 channel(s)"),
                       (["--mean", "0.5", "--std", "0"], "--std finite numbers > 0"),
                       (["--mean", "0.5", "--std", "0.2", "--stats", "imagenet"], "choose one")):
        r = runner.invoke(cli, ["standardize", str(npz), "-o", str(tmp_path / "o.h5"), *args])
        assert r.exit_code in (1, 2) and text in r.output, (args, r.output)
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------ plots and other readers


@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_plots_by_extension(npz, tmp_path, runner, ext, magic):
    assert runner.invoke(cli, ["normalize", str(npz), "-o", str(tmp_path / "o.h5")]).exit_code == 0
    r = runner.invoke(cli, ["inspect", str(tmp_path / "o.h5"), "--plot", str(tmp_path / f"h.{ext}")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / f"h.{ext}").read_bytes().startswith(magic)


def test_plot_one_bin_per_level_refused_formats_and_missing_matplotlib(npz, tmp_path, runner, monkeypatch):
    from imgnorm.describe import describe_h5
    from imgnorm.pipeline import stored_histograms
    assert runner.invoke(cli, ["standardize", str(npz), "-o", str(tmp_path / "o.h5")]).exit_code == 0
    info = describe_h5(str(tmp_path / "o.h5"))
    edges, counts = stored_histograms(info, 120)["train"]
    x = np.load(npz)["x_train"]
    assert counts.shape == (3, 256)  # integer pixels: one bin per level, exact counts
    np.testing.assert_array_equal(counts, [np.bincount(x[..., c].ravel(), minlength=256) for c in range(3)])
    r = runner.invoke(cli, ["inspect", str(tmp_path / "o.h5"), "--plot", str(tmp_path / "h.jpg")])
    assert r.exit_code == 2 and "use .png, .svg or .pdf" in r.output
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    r = runner.invoke(cli, ["inspect", str(tmp_path / "o.h5"), "--plot", str(tmp_path / "h.png")])
    assert r.exit_code == 2 and "pip install 'imgnorm[plot]'" in r.output and not (tmp_path / "h.png").exists()


def test_files_are_read_by_pytables_and_h5dump(folder, tmp_path, runner):
    assert runner.invoke(cli, ["normalize", str(folder), "--size", "8", "-o", str(tmp_path / "o.h5")]).exit_code == 0
    import tables
    with tables.open_file(str(tmp_path / "o.h5")) as t:
        assert t.root.train.files[0] == b"train/a/0.jpg" and t.root.train.x.shape == (10, 8, 8, 3)
    if shutil.which("h5dump"):
        out = subprocess.run(["h5dump", "-d", "/train/files", str(tmp_path / "o.h5")], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and '"train/a/0.jpg"' in out.stdout


def test_lzf_warns_that_only_h5py_reads_it(npz, tmp_path, runner):
    r = runner.invoke(cli, ["normalize", str(npz), "-o", str(tmp_path / "o.h5"), "--compression", "lzf"])
    assert r.exit_code == 0 and "warning: --compression lzf is read only by h5py" in r.stderr


def test_progress_in_a_log_has_lines_not_bars(folder, tmp_path):
    out = run_imgnorm("stats", folder, "--progress", "log", "--workers", "1")
    assert out.returncode == 0 and "\r" not in out.stderr  # no bar control characters in a log
    out = run_imgnorm("stats", folder, "--progress", "bar")
    assert out.returncode == 0


def test_plot_is_drawn_and_looks_right(folder, tmp_path, runner):
    """Drawn for a person: the picture opens, two panels, several colours."""
    assert runner.invoke(cli, ["standardize", str(folder), "--size", "16", "--per-channel",
                               "-o", str(tmp_path / "o.h5")]).exit_code == 0
    assert runner.invoke(cli, ["inspect", str(tmp_path / "o.h5"), "--plot", str(tmp_path / "h.png")]).exit_code == 0
    im = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    assert im.shape == (560, 800, 3)
    reds = ((im[..., 0] > 180) & (im[..., 1] < 90)).sum()
    blues = ((im[..., 2] > 180) & (im[..., 0] < 90)).sum()
    assert reds > 50 and blues > 50  # the R and B lines are there
