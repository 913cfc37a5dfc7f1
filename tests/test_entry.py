"""The process around the Click app (imgnorm/__main__.py): exit codes, output
that reaches a pipe in full although the process skips the interpreter's
teardown, and the environment it sets before numpy loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def run(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "imgnorm", *args], capture_output=True, text=True,
                          env=env, timeout=60, **kw)


def test_success_prints_everything_and_exits_0(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=x[:5])
    out = run("stats", str(tmp_path / "d.npz"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole document arrived before os._exit
    assert doc["splits"]["train"]["images"] == 50


def test_bad_data_exits_1_and_usage_exits_2(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    out = run("stats", str(bad))
    assert out.returncode == 1 and "bad.npz" in out.stderr and "Traceback" not in out.stderr
    out = run("stats", str(bad), "--workers", "0")
    assert out.returncode == 2 and "--workers" in out.stderr
    assert run("--version").stdout.startswith("imgnorm")


def test_large_output_reaches_a_pipe_whole(tmp_path):
    """More than a pipe buffer of output, read slowly: nothing is cut off."""
    x = np.zeros((2, 4, 4, 1), np.uint8)
    np.savez(tmp_path / "d.npz", **{f"x_s{i:03d}": x for i in range(300)})
    out = run("stats", str(tmp_path / "d.npz"), "--json")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) > 65536
    assert len(json.loads(out.stdout)["splits"]) == 300


def test_reader_that_goes_away_is_quiet(tmp_path):
    x = np.zeros((2, 4, 4, 1), np.uint8)
    np.savez(tmp_path / "d.npz", **{f"x_s{i:03d}": x for i in range(300)})
    proc = subprocess.Popen([sys.executable, "-m", "imgnorm", "stats", str(tmp_path / "d.npz"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # like `| head -c 10`
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 1)
    assert err == ""  # no traceback, and no "cannot write to standard output" either: the reader chose to stop


def test_last_flush_failing_is_ignored():
    """Output still buffered when the process ends, into a stream that fails
    (a full disk, a closed pipe): the exit code stands and no traceback follows."""
    code = ("import io, sys, types\n"
            "class Full(io.RawIOBase):\n"
            "    def writable(self):\n"
            "        return True\n"
            "    def write(self, b):\n"
            "        raise OSError(28, 'No space left on device')\n"
            "fake = types.ModuleType('imgnorm.cli')\n"
            "fake.CLOSED_STD_FDS = set()\n"
            "class App:\n"
            "    def main(self, **kwargs):\n"
            "        sys.stdout = io.TextIOWrapper(io.BufferedWriter(Full(), 1 << 16))\n"
            "        sys.stdout.write('x' * 100)  # buffered: fails only when flushed\n"
            "        raise SystemExit(3)\n"
            "fake.cli = App()\n"
            "sys.modules['imgnorm.cli'] = fake\n"
            "import imgnorm.__main__ as m\n"
            "m.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stderr == "", out.stderr


def test_openblas_threads_default_to_one_and_user_setting_wins():
    code = ("import os, runpy, sys; sys.argv = ['imgnorm', '--version']\n"
            "import imgnorm.__main__ as m\n"
            "os._exit = lambda c: (print(os.environ.get('OPENBLAS_NUM_THREADS')), sys.stdout.flush(), "
            "sys.exit(c))\n"
            "m.main()")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.splitlines()[-1] == "1", out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OPENBLAS_NUM_THREADS": "2"}, timeout=60)
    assert out.stdout.splitlines()[-1] == "2", out.stderr


def test_help_does_not_load_numpy():
    code = ("import sys; sys.argv = ['imgnorm', '--help']\n"
            "import os, imgnorm.__main__ as m\n"
            "os._exit = lambda c: (print('numpy' in sys.modules), sys.stdout.flush(), sys.exit(c))\n"
            "m.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "False", out.stdout + out.stderr


def test_public_names_resolve():
    import imgnorm
    assert sorted(imgnorm.__all__) == sorted(["__version__", *imgnorm._EXPORTS])
    for name in imgnorm.__all__:
        assert getattr(imgnorm, name) is not None
    with __import__("pytest").raises(AttributeError):
        imgnorm.nope  # noqa: B018


def test_malloc_tuning_keeps_batch_buffers_from_faulting_again():
    """Batches of 1 and 4 MiB buffers, two in flight, as the write pass holds
    them: with the tuning the freed ones are reused instead of mapped afresh."""
    import sysconfig
    if "gnu" not in (sysconfig.get_config_var("MULTIARCH") or "gnu"):
        __import__("pytest").skip("glibc only")
    code = """
import sys, resource, numpy as np
import imgnorm.workers as m
tuned = m.tune_malloc() if sys.argv[1] == "1" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
keep = []
start = faults()
for i in range(60):
    x = np.ones(1 << 20, np.uint8)
    keep.append(np.ones(4 << 20, np.uint8))
    if len(keep) > 2:
        keep.pop(0)
print(tuned, faults() - start)
"""
    runs = [subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, check=True,
                           timeout=60).stdout.split() for flag in "01"]
    assert runs[1][0] == "True"
    assert int(runs[1][1]) < 0.75 * int(runs[0][1]), runs


def test_output_to_a_full_device_is_a_one_line_error(tmp_path):
    if not os.path.exists("/dev/full"):
        __import__("pytest").skip("needs /dev/full")
    x = np.zeros((3, 4, 4, 1), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x)
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "imgnorm", "stats", str(tmp_path / "d.npz"), "--json"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: cannot write to standard output (No space left on device); check where it is redirected"]


def test_ctrl_c_while_importing_exits_130_quietly():
    code = ("import sys, types, os\n"
            "class Interrupted(types.ModuleType):\n"
            "    def __getattr__(self, name):\n"
            "        raise KeyboardInterrupt\n"
            "sys.modules['imgnorm.cli'] = Interrupted('imgnorm.cli')\n"
            "import imgnorm.__main__ as m\n"
            "m.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 130 and out.stderr == "", out.stderr
