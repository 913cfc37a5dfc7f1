"""Outputs: nothing replaced that should not be, everything committed together or
not at all, no temporary file left behind; run as the test's user and as nobody."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import threading
import time

import h5py
import numpy as np
import pytest

from imgnorm.errors import OptionError, OutputError
from imgnorm.outputs import TMP_SUFFIX, OutputSet, remove_stale
from imgnorm.pipeline import transform_to_hdf5
from imgnorm.sources import open_source

from conftest import imgnorm_cmd, open_to_all, run_imgnorm


@pytest.fixture
def npz(world_tmp, rng):
    path = world_tmp / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 3, 40).astype(np.uint8), x_test=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8))
    open_to_all(world_tmp)
    return path


def temporaries(folder):
    return [p for p in os.listdir(folder) if p.endswith(TMP_SUFFIX)]


@pytest.fixture
def null_device(world_tmp):
    """A character device like /dev/null, made in the test folder (root only): a
    regression must not replace the machine's own /dev/null."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    path = world_tmp / "null"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(path, 0o666)
    return path


# ------------------------------------------------------------ not regular files


def test_a_document_is_written_into_a_device_never_replacing_it(npz, null_device, user):
    for force in ([], ["--force"]):
        out = run_imgnorm("stats", npz, "-o", null_device, *force, user=user)
        assert out.returncode == 0, out.stderr
        assert stat.S_ISCHR(os.lstat(null_device).st_mode)


def test_hdf5_into_a_device_or_fifo_is_refused(npz, null_device, world_tmp, user):
    fifo = world_tmp / "fifo"
    os.mkfifo(fifo, 0o666)
    for target, kind in ((null_device, "a character device"), (fifo, "a FIFO")):
        out = run_imgnorm("normalize", npz, "-o", target, "--force", user=user)
        assert out.returncode == 2, out.stderr
        assert out.stderr == (f"Error: Invalid value for '-o': {target} is {kind}, not a regular file; HDF5 output "
                              "needs one\n")
    assert stat.S_ISCHR(os.lstat(null_device).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert temporaries(world_tmp) == []


def test_a_document_is_written_into_a_fifo_as_shell_redirection_would(npz, world_tmp):
    fifo = world_tmp / "fifo"
    os.mkfifo(fifo)
    got = []
    def read():
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    out = run_imgnorm("stats", npz, "-o", fifo)
    reader.join(30)
    assert out.returncode == 0, out.stderr
    assert json.loads(got[0])["format"] == "imgnorm.stats" and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_into_proc_is_never_replaced(npz, world_tmp, user):
    link = world_tmp / "status"
    os.symlink("/proc/self/status", link)
    for force in ([], ["--force"]):
        out = run_imgnorm("stats", npz, "-o", link, *force, user=user)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    assert os.readlink(link) == "/proc/self/status"


def test_a_symlink_to_a_pipe_gets_the_document(npz, world_tmp):
    """`-o /dev/stdout` (a link to /proc/self/fd/1) in a pipe: written into, as `>` would."""
    link = world_tmp / "stdout"
    os.symlink("/proc/self/fd/1", link)
    out = run_imgnorm("stats", npz, "-o", link, "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"format": "imgnorm.stats"') == 2  # the document, then the --json print
    assert os.path.islink(link)


def test_a_symlink_to_a_regular_file_replaces_the_file_and_keeps_the_link(npz, world_tmp):
    (world_tmp / "real.json").write_text("old")
    os.symlink("real.json", world_tmp / "link.json")
    assert run_imgnorm("stats", npz, "-o", world_tmp / "link.json").returncode == 2  # exists
    out = run_imgnorm("stats", npz, "-o", world_tmp / "link.json", "--force")
    assert out.returncode == 0, out.stderr
    assert os.readlink(world_tmp / "link.json") == "real.json"
    assert json.loads((world_tmp / "real.json").read_text())["format"] == "imgnorm.stats"


# ------------------------------------------------------------ conflicts found before any work


@pytest.mark.parametrize("args, message", [
    (["normalize", "{npz}", "-o", "{tmp}/a.h5", "--stats-out", "{tmp}/a.h5"],
     "Invalid value for '--stats-out': -o and --stats-out both name {tmp}/a.h5"),
    (["normalize", "{npz}", "-o", "{npz}", "--force"], "Invalid value for '-o': {npz} is the run's own input (SOURCE)"),
    (["stats", "{npz}", "-o", "{npz}", "--force"], "Invalid value for '-o': {npz} is the run's own input (SOURCE)"),
    (["standardize", "{npz}", "-o", "{tmp}/b.h5", "--stats", "{tmp}/s.json", "--stats-out", "{tmp}/s.json",
      "--force"], "Invalid value for '--stats-out': {tmp}/s.json is the run's own input (--stats)"),
    (["inspect", "{tmp}/o.h5", "--plot", "{tmp}/o.h5", "--force"],
     "Invalid value for '--plot': {tmp}/o.h5 is the run's own input (PATH)"),
    (["stats", "{npz}", "-o", "{tmp}/out/"], "Invalid value for '-o': {tmp}/out/ names a folder"),
    (["stats", "{npz}", "-o", ""], "Invalid value for '-o': is empty"),
    (["stats", "{npz}", "-o", "{tmp}"], "Invalid value for '-o': {tmp} is a folder"),
    (["normalize", "{npz}", "-o", "{tmp}/no/such/o.h5"], "Invalid value for '-o': {tmp}/no/such/o.h5: folder "),
])
def test_outputs_that_must_not_be_written_are_refused_before_any_work(npz, world_tmp, args, message):
    run_imgnorm("stats", npz, "-o", world_tmp / "s.json")
    run_imgnorm("normalize", npz, "-o", world_tmp / "o.h5")
    before = {p: (world_tmp / p).read_bytes() for p in ("d.npz", "s.json", "o.h5")}
    fill = {"npz": str(npz), "tmp": str(world_tmp)}
    out = run_imgnorm(*[a.format(**fill) for a in args])
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("Error: " + message.format(**fill)) and out.stderr.count("\n") == 1, out.stderr
    assert {p: (world_tmp / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(world_tmp)) == ["d.npz", "o.h5", "s.json"]


def test_output_paths_are_checked_before_any_pixel_is_read(world_tmp, rng):
    """An unwritable --stats-out fails with exit 2 before a bad image would fail the run."""
    from conftest import write_jpeg
    write_jpeg(world_tmp / "src" / "c" / "a.jpg", rng)
    (world_tmp / "src" / "c" / "bad.jpg").write_bytes(b"not a jpeg")
    (world_tmp / "ro").mkdir()
    open_to_all(world_tmp)
    os.chmod(world_tmp / "ro", 0o555)
    out = run_imgnorm("standardize", world_tmp / "src", "-o", world_tmp / "o.h5", "--stats-out",
                      world_tmp / "ro" / "s.json", user="nobody")
    assert out.returncode == 2, out.stderr
    assert out.stderr == (f"Error: Invalid value for '--stats-out': cannot create a file in {world_tmp / 'ro'} "
                          "(Permission denied); choose a folder you can write to\n")
    assert sorted(os.listdir(world_tmp)) == ["ro", "src"]  # no HDF5, no temporary file


# ------------------------------------------------------------ committed together, or not at all


def test_outputs_are_committed_together_or_not_at_all(npz, world_tmp):
    """The stats document goes to /dev/full: the HDF5 file, already renamed into place, is taken back."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (world_tmp / "o.h5").write_bytes(b"yesterday")
    out = run_imgnorm("normalize", npz, "-o", world_tmp / "o.h5", "--stats-out", "/dev/full", "--force")
    assert out.returncode == 1
    assert out.stderr == "Error: /dev/full: cannot write (disk full); nothing was written\n"
    assert (world_tmp / "o.h5").read_bytes() == b"yesterday"
    out = run_imgnorm("normalize", npz, "-o", world_tmp / "new.h5", "--stats-out", "/dev/full")
    assert out.returncode == 1 and not (world_tmp / "new.h5").exists()
    assert temporaries(world_tmp) == []


def test_an_output_that_appears_during_the_run_is_not_replaced(npz, tmp_path, monkeypatch):
    import imgnorm.pipeline as pipeline
    out = tmp_path / "o.h5"
    real = pipeline._write_split

    def meanwhile(*a, **k):
        if not out.exists():
            out.write_text("someone else's")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "_write_split", meanwhile)
    with pytest.raises(OutputError, match="o.h5 appeared while imgnorm was running; it was not replaced"):
        transform_to_hdf5(open_source(npz), str(out), "normalize")
    assert out.read_text() == "someone else's" and temporaries(tmp_path) == []
    transform_to_hdf5(open_source(npz), str(out), "normalize", force=True)  # --force replaces it
    assert h5py.is_hdf5(out)


def test_two_concurrent_runs_to_one_output_one_succeeds_one_fails(world_tmp, rng):
    path = world_tmp / "big.npz"
    np.savez(path, x_train=rng.integers(0, 256, (20000, 32, 32), dtype=np.uint8))
    runs = [subprocess.Popen(imgnorm_cmd("normalize", path, "-o", world_tmp / "o.h5", "-q"), stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = sorted((p.wait(60), p.stderr.read()) for p in runs)
    for p in runs:
        p.stderr.close()
    assert [code for code, _ in results] == [0, 1], results
    assert "o.h5 appeared while imgnorm was running; it was not replaced" in results[1][1]
    assert h5py.File(world_tmp / "o.h5")["train/x"].shape == (20000, 32, 32, 1)
    assert temporaries(world_tmp) == []


# ------------------------------------------------------------ temporaries


def test_temporaries_of_a_run_that_is_gone_are_removed_by_the_next(npz, world_tmp):
    stale = world_tmp / f".o.h5.99999999.0badc0de{TMP_SUFFIX}"
    stale.write_bytes(b"left by a killed run")
    cache = world_tmp / f".o.h5.99999999.0badc0de.cache{TMP_SUFFIX}"
    cache.write_bytes(b"pixels")
    live = world_tmp / f".o.h5.{os.getpid()}.12345678{TMP_SUFFIX}"
    live.write_bytes(b"a run in progress")
    other = world_tmp / f".other.h5.99999999.0badc0de{TMP_SUFFIX}"
    other.write_bytes(b"another output's")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running imgnorm holds its temporaries
        out = run_imgnorm("normalize", npz, "-o", world_tmp / "o.h5")
        assert out.returncode == 0, out.stderr
        assert sorted(temporaries(world_tmp)) == sorted([live.name, other.name])
    assert remove_stale(str(world_tmp), "o.h5") == [str(live)]  # its owner let go


def test_a_run_killed_with_sigkill_leaves_temporaries_the_next_run_removes(world_tmp, rng):
    import signal
    path = world_tmp / "big.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40000, 32, 32), dtype=np.uint8))
    proc = subprocess.Popen(imgnorm_cmd("standardize", path, "-o", world_tmp / "o.h5", "--dtype", "float64",
                                        "--batch-size", "64", "--compression", "gzip", "-q"))
    deadline = time.monotonic() + 30
    while not temporaries(world_tmp):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert temporaries(world_tmp)  # nothing could remove them
    np.savez(world_tmp / "small.npz", x_train=np.zeros((3, 4, 4), np.uint8))
    out = run_imgnorm("normalize", world_tmp / "small.npz", "-o", world_tmp / "o.h5")
    assert out.returncode == 0, out.stderr
    assert temporaries(world_tmp) == []


# ------------------------------------------------------------ disk space


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_fails_before_the_work_and_says_what_is_free(small_disk, rng, tmp_path):
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (4000, 32, 32), dtype=np.uint8))  # 16 MiB as float32
    (small_disk / "filler").write_bytes(bytes(12 << 20))
    out = run_imgnorm("normalize", tmp_path / "d.npz", "-o", small_disk / "o.h5")
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: {small_disk / 'o.h5'}: cannot write (not enough disk space: the run "
                                 "needs up to 20.")
    assert "12.0 MiB free); nothing was written\n" in out.stderr  # the real free space: nothing held
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_the_reservation_covers_the_pixel_cache(small_disk, rng, tmp_path, monkeypatch):
    import imgnorm.pipeline as pipeline
    from conftest import write_jpeg
    for i in range(12):
        write_jpeg(tmp_path / "src" / f"{i}.jpg", rng, size=(64, 64))
    plan = pipeline.plan_write(open_source(tmp_path / "src"), pipeline.Scaler())
    # room for the HDF5 file's bound, not for the cache too
    (small_disk / "filler").write_bytes(bytes((24 << 20) - plan.bound - plan.cache_bytes // 2))
    with pytest.raises(OutputError, match=r"\(.* for .*o\.h5, .* for decoded pixels kept between the two passes\)"):
        transform_to_hdf5(open_source(tmp_path / "src"), str(small_disk / "o.h5"), workers=1)
    assert sorted(os.listdir(small_disk)) == ["filler"]


# ------------------------------------------------------------ the library's OutputSet


def test_output_set_removes_its_temporaries_on_any_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with OutputSet() as outputs:
            a = outputs.add(tmp_path / "a.json", "-o")
            outputs.scratch(a)
            assert len(temporaries(tmp_path)) == 2
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_output_set_commits_small_outputs(tmp_path):
    with OutputSet() as outputs:
        a = outputs.add(tmp_path / "a.json", "-o")
        outputs.set_content(a, b"{}\n")
        outputs.commit()
    assert (tmp_path / "a.json").read_bytes() == b"{}\n" and os.listdir(tmp_path) == ["a.json"]
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o666 & ~_umask()
    with pytest.raises(OptionError, match="exists; pass --force"):
        OutputSet().add(tmp_path / "a.json", "-o")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
