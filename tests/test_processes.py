"""Processes and streams: no worker outlives its parent, signals clean up, and the
exit status says whether the outputs were committed whatever the streams do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import imgnorm_cmd, open_to_all, run_imgnorm, write_jpeg


@pytest.fixture(scope="session")
def slow_image():
    """One 2500x2500 noise JPEG (about 0.1 s to decode), readable by every user."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="imgnorm-slow-")
    os.chmod(d, 0o755)
    write_jpeg(os.path.join(d, "big.jpg"), np.random.default_rng(0), size=(2500, 2500))
    os.chmod(os.path.join(d, "big.jpg"), 0o644)
    yield os.path.join(d, "big.jpg")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def folder(world_tmp, slow_image):
    """40 links to a large JPEG in two classes (three tasks): a second or two of work for two workers."""
    for i in range(40):
        os.makedirs(world_tmp / "src" / f"c{i % 2}", exist_ok=True)
        os.symlink(slow_image, world_tmp / "src" / f"c{i % 2}" / f"{i}.jpg")
    open_to_all(world_tmp)
    return world_tmp / "src"


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def workers_of(proc, want: int = 2, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its workers were seen"
        kids = children(proc.pid)
        if len(kids) >= want:
            return kids
        time.sleep(0.005)
    raise AssertionError("no workers started")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM])
def test_killing_the_parent_ends_every_worker(folder, world_tmp, sig, user):
    proc = subprocess.Popen(imgnorm_cmd("standardize", folder, "--size", "64x64", "-o", world_tmp / "o.h5",
                                        "--workers", "2", "-q", user=user))
    kids = workers_of(proc)  # setpriv execs imgnorm: the same process
    os.kill(proc.pid, sig)
    proc.wait(30)
    deadline = time.monotonic() + 5
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(k) for k in kids), [k for k in kids if alive(k)]
    if sig != signal.SIGKILL:  # handled: exit 128 + N and nothing left behind
        assert (proc.returncode, sorted(os.listdir(world_tmp))) == (128 + sig, ["src"])


def test_command_substitution_returns_when_the_parent_is_killed(folder):
    """`out=$(imgnorm stats ...)` waits for every holder of its pipe: workers must not hold it."""
    script = f"out=$(timeout -s KILL 0.6 {' '.join(imgnorm_cmd('stats', folder, '--workers', '2'))}); echo done"
    start = time.monotonic()
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "done"
    assert time.monotonic() - start < 10


def test_workers_hold_no_descriptor_but_their_pipe(folder, world_tmp):
    proc = subprocess.Popen(imgnorm_cmd("standardize", folder, "--size", "64x64", "-o", world_tmp / "o.h5",
                                        "--workers", "2", "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def settled(kid: int) -> tuple[bool, dict]:
        fds = {int(fd): os.readlink(f"/proc/{kid}/fd/{fd}") for fd in os.listdir(f"/proc/{kid}/fd")}
        std = all(fds.get(fd) == "/dev/null" for fd in (0, 1, 2))  # not the caller's pipes
        pipes = [t for fd, t in fds.items() if fd > 2 and t.startswith(("socket:", "pipe:"))]
        lock = any(".imgnorm-tmp" in t for t in fds.values())  # not the output's lock
        return std and len(pipes) == 1 and not lock, fds  # its own pipe to the parent, no sibling's

    try:
        for kid in workers_of(proc):
            deadline = time.monotonic() + 5  # a worker closes what it inherited just after the fork
            while not (state := settled(kid))[0] and time.monotonic() < deadline:
                time.sleep(0.005)
            assert state[0], state[1]
    finally:
        proc.kill()
        proc.communicate()


def test_too_many_workers_are_capped_with_a_note(folder):
    out = run_imgnorm("stats", folder, "--workers", "1000")
    assert out.returncode == 0, out.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"warning: --workers 1000 is more than there are {cores} core(s); using {cores}" in out.stderr


# ------------------------------------------------------------ standard streams


@pytest.fixture
def npz(world_tmp, rng):
    np.savez(world_tmp / "d.npz", x_train=rng.integers(0, 256, (30, 6, 6), dtype=np.uint8))
    open_to_all(world_tmp)
    return world_tmp / "d.npz"


def shell(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, **kw)


def q(*args) -> str:
    return " ".join(f"'{a}'" for a in imgnorm_cmd(*args))


def test_a_reader_that_stops_early_does_not_undo_a_committed_run(npz, world_tmp):
    out = shell(f"{q('stats', npz, '-o', world_tmp / 's.json', '--json')} | true; echo \"status ${{PIPESTATUS[0]}}\"")
    assert out.stdout.strip() == "status 0" and "Traceback" not in out.stderr and "bug" not in out.stderr
    assert json.loads((world_tmp / "s.json").read_text())["format"] == "imgnorm.stats"
    out = shell(f"{q('stats', npz, '--json')} | true; echo \"status ${{PIPESTATUS[0]}}\"")
    assert out.stdout.strip() == "status 1" and out.stderr == ""  # the result itself was cut off: quietly


@pytest.mark.parametrize("redirect", ["2>&-", ">&-", "2>/dev/full", ">&- 2>&-"])
def test_closed_or_full_streams_never_fail_a_committed_run(npz, world_tmp, redirect):
    if "full" in redirect and not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    out = shell(f"{q('standardize', npz, '-o', world_tmp / 'o.h5', '--stats-out', world_tmp / 's.json')} "
                f"{redirect}; echo \"status $?\"")
    assert out.stdout.strip().splitlines()[-1] == "status 0", out.stderr
    assert "Traceback" not in out.stderr
    import h5py
    with h5py.File(world_tmp / "o.h5") as f:
        assert f["train/x"].shape == (30, 6, 6, 1)
    assert json.loads((world_tmp / "s.json").read_text())["format"] == "imgnorm.stats"


def test_with_stderr_closed_no_output_file_gets_descriptor_2(npz, world_tmp):
    """With fd 2 closed, a file opened by the run would get descriptor 2 and
    receive whatever is written to stderr (a warning): it must not."""
    x = np.zeros((4, 3, 3, 2), np.uint8)
    x[..., 0] = np.arange(4)[:, None, None]
    np.savez(world_tmp / "flat.npz", x=x)  # channel 1 is constant: a warning is printed
    out = shell(f"{q('standardize', world_tmp / 'flat.npz', '--per-channel', '-o', world_tmp / 'o.h5')} 2>&-; "
                "echo \"status $?\"")
    assert out.stdout.strip() == "status 0"
    import h5py
    with h5py.File(world_tmp / "o.h5") as f:  # a valid file, nothing written into it from stderr
        assert f["all/x"].shape == (4, 3, 3, 2)


def test_a_result_meant_for_a_closed_stdout_is_an_error(npz):
    out = shell(f"{q('stats', npz)} >&-; echo \"status $?\"")
    assert out.stdout.strip() == "status 1"
    assert out.stderr == "Error: cannot write to standard output (it is closed); check where it is redirected\n"


def test_errors_with_a_full_stderr_keep_their_status(npz, world_tmp):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    out = shell(f"{q('stats', world_tmp / 'missing.npz')} 2>/dev/full; echo \"status $?\"")
    assert out.stdout.strip() == "status 1"
    out = shell(f"{q('stats', npz, '--workers', '0')} 2>/dev/full; echo \"status $?\"")
    assert out.stdout.strip() == "status 2"


def test_sighup_is_handled_like_sigterm(world_tmp, rng):
    path = world_tmp / "big.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40000, 32, 32), dtype=np.uint8))
    proc = subprocess.Popen(imgnorm_cmd("standardize", path, "-o", world_tmp / "o.h5", "--dtype", "float64",
                                        "--batch-size", "64", "--compression", "gzip", "-q"),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(p.endswith(".imgnorm-tmp") for p in os.listdir(world_tmp)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGHUP and "Traceback" not in err
    assert sorted(os.listdir(world_tmp)) == ["big.npz"]


def test_python_dash_m_and_the_console_script_agree(npz):
    a = run_imgnorm("stats", npz, "--json").stdout
    b = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgnorm"), "stats", str(npz), "--json"],
                       capture_output=True, text=True, timeout=60).stdout
    assert a == b and json.loads(a)["splits"]["train"]["images"] == 30


_BUSY_WORKERS = """
import os, sys, time
from imgnorm.sources import open_source
from imgnorm.workers import LocalExecutor

def busy(source, task):
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()  # (a worker's stdout is /dev/null)
    time.sleep(60)  # inside a task: the worker does not read its pipe

with LocalExecutor(open_source(sys.argv[1]), 2, tasks=2) as ex:
    list(ex.map(busy, [1, 2]))
"""


def test_a_worker_busy_in_a_task_dies_with_its_parent(folder, tmp_path):
    """The pipe's end of file reaches a worker only between tasks; the parent-death
    signal ends it at once, whatever it is doing."""
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_WORKERS, str(folder), str(tmp_path)])
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path)) < 2:  # both workers are inside their task
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    kids = [int(p) for p in os.listdir(tmp_path)]
    proc.kill()
    proc.wait(30)
    deadline = time.monotonic() + 5
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(k) for k in kids)


def test_a_signal_inside_a_held_block_waits_for_its_end():
    """SIGTERM during a fork's at-fork callbacks or between making a temporary and
    recording it would be ignored or leave the file: such steps run held()."""
    from imgnorm.interrupts import held, on_signal
    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        reached = []
        with pytest.raises(SystemExit) as e:
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler has run by now, and raised nothing
                reached.append("end of block")
        assert reached == ["end of block"] and e.value.code == 128 + signal.SIGTERM
        with pytest.raises(SystemExit):  # outside a held block it ends the run at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_as_the_workers_start_leaves_nothing(folder, world_tmp, sig):
    """Killed just as its workers fork (the at-fork window) and as the pixel cache
    is made: exit 128 + N, no output, no temporary, every time."""
    for _ in range(5):
        proc = subprocess.Popen(imgnorm_cmd("standardize", folder, "--size", "64x64", "-o", world_tmp / "o.h5",
                                            "--workers", "2", "-q"))
        workers_of(proc, want=1)
        os.kill(proc.pid, sig)
        proc.wait(30)
        assert (proc.returncode, sorted(os.listdir(world_tmp))) == (128 + sig, ["src"])
