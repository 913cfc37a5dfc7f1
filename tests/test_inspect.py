"""`imgnorm inspect` on what users hand it: sources with left-out entries, HDF5
files whose attributes were changed, a stats attribute of a gigabyte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from imgnorm.cli import cli

from conftest import imgnorm_cmd, write_jpeg


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def h5(runner, tmp_path, rng):
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
             y_train=np.arange(6) % 2)
    out = tmp_path / "o.h5"
    assert runner.invoke(cli, ["standardize", str(tmp_path / "d.npz"), "-o", str(out)]).exit_code == 0
    return out


@pytest.mark.parametrize("name, value, text", [
    ("options", "[1, 2]", "attribute 'options' is not a JSON object"),
    ("options", '{"layout": "hwc"}', "attribute 'options' has layout 'hwc'"),
    ("class_names", '"cats"', "attribute 'class_names' is not a JSON list"),
    ("class_names", "[1, 2]", "attribute 'class_names' holds names that are not text"),
    ("method", "whiten!", "attribute 'method' is 'whiten!', not one of"),
    ("method", np.int64(3), "attribute 'method' is not text"),
    ("stats", "{not json", "attribute 'stats' is not valid JSON"),
    ("stats", '{"format": "imgnorm.stats", "version": 1}', "attribute 'stats' is not a valid stats document"),
    ("skipped", "3", "attribute 'skipped' is not a JSON list"),
])
def test_malformed_attributes_are_one_line_errors_naming_them(runner, h5, name, value, text):
    with h5py.File(h5, "a") as f:
        f.attrs[name] = value
    r = runner.invoke(cli, ["inspect", str(h5)])
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"Error: {h5}: {text}") and r.output.count("\n") == 1, r.output


def test_malformed_datasets_are_one_line_errors(runner, h5):
    with h5py.File(h5, "a") as f:
        del f["train/y"]
        f["train/y"] = np.zeros(3, np.int64)  # fewer labels than images
    r = runner.invoke(cli, ["inspect", str(h5)])
    assert r.exit_code == 1 and "/train/y is not one integer label per image" in r.output


def test_a_huge_stats_attribute_keeps_memory_bounded(h5, tmp_path):
    with h5py.File(h5, "a", libver="latest") as f:
        f.attrs["stats"] = "x" * (300 << 20)
    # Measured from a small process: a child's peak RSS starts at its parent's (this
    # test's, which wrote the attribute) through fork and exec.
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
             "sys.stdout.write(p.stderr)")
    out = subprocess.run([sys.executable, "-c", probe, *imgnorm_cmd("inspect", h5)], capture_output=True, text=True,
                         timeout=120)
    status, peak_kib = map(int, out.stdout.splitlines()[0].split())
    assert status == 1
    assert out.stdout.splitlines()[1:] == [f"Error: {h5}: attribute 'stats' is too large to read"]
    # HDF5 would take ~5x the attribute (1.5 GB) to read it; the reader's memory is capped
    assert peak_kib < 800 * 1024, peak_kib


def test_inspect_a_source_names_what_it_left_out_and_counts_images(runner, tmp_path, rng):
    for i in range(3):
        write_jpeg(tmp_path / "src" / "train" / "a" / f"{i}.jpg", rng)
    write_jpeg(tmp_path / "src" / "val" / "a" / "v.jpg", rng)
    (tmp_path / "src" / "train" / "a" / "bad.jpg").write_bytes(b"nope")
    for i in range(14):
        (tmp_path / "src" / "train" / "a" / f"note{i:02d}.txt").write_text("x")
    os.symlink("../..", tmp_path / "src" / "train" / "a" / "up")
    r = runner.invoke(cli, ["inspect", str(tmp_path / "src")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "total: 5 images" in lines
    assert "skipped: 1" in lines and any("train/a/up: symlink to its own ancestor folder" in x for x in lines)
    assert f"  unreadable {tmp_path / 'src' / 'train' / 'a' / 'bad.jpg'}: not a readable image " \
           "(cannot identify image file" in r.output
    assert "ignored (hidden, not images, outside the layout): 14" in lines
    assert "  ... and 4 more" in lines  # the first ten by name, then a count
    doc = json.loads(runner.invoke(cli, ["inspect", str(tmp_path / "src"), "--json"]).stdout)
    assert doc["images"] == 5 and doc["ignored"]["count"] == 14 and len(doc["ignored"]["first"]) == 10
