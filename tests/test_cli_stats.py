"""`imgnorm stats` and the CLI as a whole."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imgnorm.cli import cli
from imgnorm.pipeline import compute_stats
from imgnorm.sources import open_source


@pytest.fixture
def runner():
    return CliRunner()


def test_every_command_has_help_with_an_example(runner):
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output and f"imgnorm {name}" in result.output, name


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and "imgnorm, version" in result.output


def test_stats_table(runner, photo_folder):
    result = runner.invoke(cli, ["stats", str(photo_folder), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "split train: 12 images" in result.output and "split val: 6 images" in result.output
    assert "mean/255" in result.output and "  R " in result.output


def test_stats_json_is_the_library_document(runner, mnist_npz):
    path, _ = mnist_npz
    result = runner.invoke(cli, ["stats", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(compute_stats(open_source(path))))


def test_stats_output_file_and_split(runner, photo_folder, tmp_path):
    out = tmp_path / "s.json"
    result = runner.invoke(cli, ["stats", str(photo_folder), "--split", "val", "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert list(doc["splits"]) == ["val"] and doc["splits"]["val"]["images"] == 6


def test_existing_output_is_not_clobbered(runner, mnist_npz, tmp_path):
    out = tmp_path / "s.json"
    out.write_text("precious")
    result = runner.invoke(cli, ["stats", str(mnist_npz[0]), "-o", str(out)])
    assert result.exit_code == 2  # wrong usage: found before any work
    assert result.output.strip() == f"Error: Invalid value for '-o': {out} exists; pass --force to replace it"
    assert out.read_text() == "precious"
    assert runner.invoke(cli, ["stats", str(mnist_npz[0]), "-o", str(out), "--force"]).exit_code == 0
    assert json.loads(out.read_text())["format"] == "imgnorm.stats"
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_missing_source_is_one_line_exit_1(runner, tmp_path):
    result = runner.invoke(cli, ["stats", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nope'}: no such file or folder\n"


@pytest.mark.parametrize("args, text", [
    (["--size", "big"], "'big' is not WIDTHxHEIGHT"),
    (["--color", "cmyk"], "'cmyk' is not one of"),
    (["--workers", "0"], "--workers"),
    (["--split", "nope"], "has no split 'nope'"),
])
def test_bad_flags_exit_2(runner, photo_folder, args, text):
    result = runner.invoke(cli, ["stats", str(photo_folder), *args])
    assert result.exit_code == 2 and text in result.output


def test_python_dash_m(photo_folder):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "imgnorm", "stats", str(photo_folder), "--json", "--split", "val"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["splits"]["val"]["images"] == 6
