"""Ctrl-C, SIGTERM and a write that fails half-way: no output, no temporary
file, an existing output untouched.  Runs the real command in a subprocess."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


@pytest.fixture
def big_npz(tmp_path):
    """Large enough that writing takes a good fraction of a second."""
    x = np.random.default_rng(0).integers(0, 256, (40000, 32, 32), dtype=np.uint8)
    path = tmp_path / "big.npz"
    np.savez(path, x_train=x, x_test=x[:2000])
    return path


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if p not in ("big.npz", "out.h5"))


def start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "imgnorm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_write_leaves_nothing(big_npz, tmp_path, sig):
    out = tmp_path / "out.h5"
    out.write_bytes(b"yesterday's good output")
    proc = start(["standardize", str(big_npz), "-o", str(out), "--force", "--dtype", "float64",
                  "--batch-size", "32", "--compression", "gzip", "-q"])
    deadline = time.monotonic() + 30
    while not any(p.endswith(".imgnorm-tmp") for p in os.listdir(tmp_path)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert out.read_bytes() == b"yesterday's good output"
    assert leftovers(tmp_path) == []


def test_write_failing_half_way_leaves_nothing(big_npz, tmp_path):
    """A file-size limit makes writes fail part-way, as a full disk does."""
    out = tmp_path / "out.h5"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    proc = start(["normalize", str(big_npz), "-o", str(out), "-q"], preexec_fn=limit)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    # the space is reserved up front, so this fails before any pixel is written
    assert err.startswith(f"Error: {out}: cannot write (over the file size limit: the run needs up to ")
    assert err.count("\n") == 1, err
    assert not out.exists() and leftovers(tmp_path) == []


def test_disk_full_while_caching_pixels_leaves_nothing(tmp_path, monkeypatch, rng):
    """The pixel cache beside OUT fills the disk: a clean error, nothing left."""
    import errno

    from imgnorm import pipeline
    from imgnorm.errors import OutputError
    from imgnorm.sources import open_source
    from conftest import write_jpeg

    for i in range(40):
        write_jpeg(tmp_path / "d" / f"{i}.jpg", rng)
    real_pwrite = os.pwrite
    calls = []

    def full(fd, data, offset):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out.h5"
    with pytest.raises(OutputError, match="cannot write \\(disk full\\)"):
        pipeline.transform_to_hdf5(open_source(tmp_path / "d"), str(out), "standardize", workers=1, batch_size=8)
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_ctrl_c_to_the_process_group_with_workers(tmp_path):
    """Ctrl-C in a terminal signals every process: workers must not print tracebacks."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(120):
        d = tmp_path / "data" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    out = tmp_path / "out.h5"
    proc = start(["standardize", str(tmp_path / "data"), "-o", str(out), "--workers", "2", "--dtype", "float64",
                  "--compression", "gzip", "-q"], start_new_session=True)
    deadline = time.monotonic() + 30
    while not any(p.endswith(".imgnorm-tmp") for p in os.listdir(tmp_path)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["data"]
