"""Every number checked: flags (exit 2) and stats documents (exit 1), each a
one-line error naming the culprit, nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from imgnorm.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def npz(tmp_path, rng):
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
             x_test=rng.integers(0, 256, (5, 6, 6), dtype=np.uint8))
    return tmp_path / "d.npz"


@pytest.mark.parametrize("args, text", [
    (["standardize", "--epsilon", "nan"], "Invalid value for '--epsilon': must be a finite number >= 0, got nan"),
    (["standardize", "--epsilon", "inf"], "Invalid value for '--epsilon': must be a finite number >= 0, got inf"),
    (["standardize", "--epsilon", "-1"], "Invalid value for '--epsilon': must be a finite number >= 0, got -1.0"),
    (["normalize", "--max-value", "nan"], "Invalid value for '--max-value': must be a finite number > 0, got nan"),
    (["normalize", "--max-value", "inf"], "Invalid value for '--max-value': must be a finite number > 0, got inf"),
    (["normalize", "--max-value", "1e400"], "Invalid value for '--max-value': must be a finite number > 0, got inf"),
    (["normalize", "--size", "100000x100000"], "Invalid value for '--size': size 100000x100000 is 10,000,000,000 "
                                               "pixels, more than Pillow's decompression-bomb limit"),
    (["normalize", "--size", "99999999999x2"], "Invalid value for '--size': size '99999999999x2' is not WIDTHxHEIGHT"),
    (["normalize", "--max-value", "0.001", "--dtype", "float16"],
     "Invalid value for '--dtype': values up to 255000 overflow float16; use --dtype float32"),
    (["normalize", "--max-value", "0.001", "--dtype", "float16", "--per-image"],
     "Invalid value for '--dtype': values up to 255000 overflow float16"),
    (["center", "--unit", "--max-value", "0.001", "--dtype", "float16"], "overflow float16"),
])
def test_bad_numbers_in_flags_exit_2_before_any_work(runner, npz, tmp_path, args, text):
    r = runner.invoke(cli, [args[0], str(npz), "-o", str(tmp_path / "o.h5"), *args[1:]])
    assert r.exit_code == 2, r.output
    assert text in r.output and "Traceback" not in r.output
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_float16_overflow_of_float_pixels_is_found_while_writing(runner, tmp_path):
    x = np.zeros((4, 3, 3), np.float32)
    x[3, 0, 0] = 1e6  # only the test split holds it
    np.savez(tmp_path / "f.npz", x_train=np.ones((4, 3, 3), np.float32), x_test=x)
    r = runner.invoke(cli, ["normalize", str(tmp_path / "f.npz"), "--max-value", "1", "--dtype", "float16",
                            "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 2 and "values overflow float16" in r.output
    assert sorted(os.listdir(tmp_path)) == ["f.npz"]


@pytest.fixture
def good_doc(runner, npz, tmp_path):
    assert runner.invoke(cli, ["stats", str(npz), "-o", str(tmp_path / "s.json")]).exit_code == 0
    return json.loads((tmp_path / "s.json").read_text())


def edit(doc, path, value):
    d = json.loads(json.dumps(doc))
    *keys, last = path
    target = d
    for k in keys:
        target = target[k]
    target[last] = value
    return json.dumps(d)


@pytest.mark.parametrize("make, text", [
    (lambda d: edit(d, ["version"], True), "stats document version True; this imgnorm reads versions 1, 2"),
    (lambda d: edit(d, ["version"], 1.0), "stats document version 1.0"),
    (lambda d: edit(d, ["channels"], "1"), 'channels is "1"; expected a whole number'),
    (lambda d: edit(d, ["max_value"], -3), "max_value is -3; expected a number > 0"),
    (lambda d: json.dumps(d).replace('"mean": ' + repr(d["splits"]["train"]["per_channel"]["mean"][0]),
                                     '"mean": NaN', 1), "NaN is not a number JSON allows"),
    (lambda d: edit(d, ["splits", "train", "per_channel", "mean"], ["x"]),
     'splits.train.per_channel.mean[0] is "x"; expected a finite number'),
    (lambda d: edit(d, ["splits", "train", "global", "mean"], "INF").replace('"INF"', "1e999"),
     "splits.train.global.mean is inf; expected a finite number"),
    (lambda d: edit(d, ["splits", "train", "per_channel", "std"], [-1.0]),
     "splits.train.per_channel.std[0] is -1.0; expected a number >= 0"),
    (lambda d: edit(d, ["splits", "train", "per_channel", "std"], []),
     "splits.train.per_channel.std has 0 value(s); the document has 1 channel(s)"),
    (lambda d: edit(d, ["splits", "train", "sums", "sum_sq"], [0]), "give a negative variance"),
    (lambda d: edit(d, ["splits", "train", "images"], "BIG").replace('"BIG"', "9" * 5000),
     "a number of thousands of digits"),
    (lambda d: '{"format": "imgnorm.stats", "version": 1, "x": ' + "[" * 100000 + "]" * 100000 + "}",
     "not a stats document (nested too deeply)"),
    (lambda d: edit(d, ["fit_split"], "nope"), "fit_split 'nope' is not one of the splits"),
    (lambda d: edit(d, ["splits"], []), "splits is []; expected an object"),
    (lambda d: "[1, 2]", 'not an imgnorm stats document'),
])
def test_bad_stats_documents_exit_1_naming_the_field(runner, npz, tmp_path, good_doc, make, text):
    bad = tmp_path / "bad.json"
    bad.write_text(make(good_doc))
    for args in (["standardize", str(npz), "--stats", str(bad), "-o", str(tmp_path / "o.h5")],
                 ["inspect", str(bad)]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1, r.output
        assert r.output.startswith(f"Error: {bad}: ") and text in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "o.h5").exists()


def test_a_huge_stats_file_is_refused_without_reading_it_whole(runner, npz, tmp_path):
    from imgnorm import stats
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(stats.MAX_DOCUMENT_BYTES + 10)
    r = runner.invoke(cli, ["standardize", str(npz), "--stats", str(big), "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and "too large for a stats document" in r.output
