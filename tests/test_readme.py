"""Every Python block of README.md runs as written, in order, in a folder set up
as the README's shell examples leave it (a photo folder, an MNIST-style .npz,
photos.h5 and photos.zarr written by the command line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from conftest import write_jpeg

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), flags=re.S | re.M)


def test_readme_python_blocks_run_as_written(tmp_path, rng):
    blocks = python_blocks()
    assert len(blocks) >= 5
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                write_jpeg(tmp_path / "data" / "photos" / split / cls / f"{i}.jpg", rng, size=(70 + i, 50))
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 100).astype(np.uint8),
             x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 30).astype(np.uint8))
    subprocess.run([sys.executable, "-m", "imgnorm", "standardize", "data/photos", "--size", "64x64", "--per-channel",
                    "-o", "photos.h5", "-q"], cwd=tmp_path, check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "imgnorm", "standardize", "data/photos", "--size", "64x64",
                    "-o", "photos.zarr", "-q"], cwd=tmp_path, check=True, timeout=120)
    for i, block in enumerate(blocks):  # each on its own, as a reader would paste it
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, f"README block {i}:\n{block}\n{out.stderr}"
