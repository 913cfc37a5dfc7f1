"""Dask: the same bytes from a cluster as from one process, a killed worker changing nothing.

One LocalCluster of 2 worker processes serves the module (started once: a
cluster costs about a second); the killed-worker test starts its own.
"""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import signal
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import imgnorm
from imgnorm.cli import cli
from imgnorm.pipeline import compute_stats, transform_to_hdf5
from imgnorm.stats import document_bytes

from conftest import run_imgnorm, write_jpeg

distributed = pytest.importorskip("distributed")
# Dask's own sockets and dashboards (closed by its threads, on its schedule), not imgnorm's:
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore:Port .* is already in use")]
from imgnorm.cluster import DaskExecutor  # noqa: E402


def local_cluster(scratch):
    """A LocalCluster of 2 worker processes whose scratch files go to ``scratch`` (Dask's
    default, TMPDIR/dask-scratch-space, would outlive the tests)."""
    import dask
    with dask.config.set({"temporary-directory": str(scratch)}):
        return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                        silence_logs=50, local_directory=str(scratch))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c.scheduler_address


@pytest.fixture
def folder(tmp_path, rng):
    root = tmp_path / "photos"
    for split, n in (("train", 30), ("val", 9)):
        for i in range(n):
            write_jpeg(root / split / ("a" if i % 3 else "b") / f"{i:03d}.jpg", rng, size=(24 + i % 5, 20))
    return root


def test_stats_documents_are_byte_identical_for_any_shard_count(cluster, folder, mnist_npz_compressed,
                                                                monkeypatch):
    for path in (folder, mnist_npz_compressed[0]):
        src = imgnorm.open_source(path)
        want = document_bytes(compute_stats(src, workers=1))
        for chunk, batch in ((1, None), (7, 5), (64, None)):
            monkeypatch.setattr(DaskExecutor, "chunk", chunk)
            got = compute_stats(src, executor=DaskExecutor(src, cluster), batch_size=batch)
            assert document_bytes(got) == want, (path, chunk)


def test_with_on_error_skip_a_write_command_on_dask_writes_the_same_bytes(cluster, folder, tmp_path):
    # the pixels come back and this process writes the file, as without Dask
    src = imgnorm.open_source(folder, size=(16, 16), on_error="skip")
    a, b = tmp_path / "pool.h5", tmp_path / "dask.h5"
    transform_to_hdf5(src, str(a), "standardize", workers=2, on_error="skip")
    transform_to_hdf5(src, str(b), "standardize", executor=DaskExecutor(src, cluster), on_error="skip")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["dask.h5", "photos", "pool.h5"]  # no part files


def test_the_command_line_takes_a_scheduler_address_and_the_environment(cluster, mnist_npz, tmp_path):
    mnist_npz = mnist_npz[0]
    out = tmp_path / "s.json"
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz), "-o", str(out), "-q"], env={"IMGNORM_SCHEDULER": cluster})
    assert r.exit_code == 0, r.output
    src = imgnorm.open_source(mnist_npz)
    assert out.read_bytes() == document_bytes(compute_stats(src))


class _KillingExecutor(DaskExecutor):
    """Kills one worker process as soon as the first result is in: mid-run, every time."""

    def map(self, fn, tasks):
        pids = self.client.run(os.getpid)
        for i, result in enumerate(super().map(fn, tasks)):
            if i == 0:
                os.kill(next(iter(pids.values())), signal.SIGKILL)
            yield result


def test_a_worker_killed_mid_run_changes_nothing(tmp_path, rng, monkeypatch):
    root = tmp_path / "p"
    for i in range(60):
        write_jpeg(root / ("a" if i % 2 else "b") / f"{i:03d}.jpg", rng, size=(64, 48))
    src = imgnorm.open_source(root)
    want = document_bytes(compute_stats(src, workers=1))
    monkeypatch.setattr(DaskExecutor, "chunk", 2)  # 30 tasks: most run after the kill
    with local_cluster(tmp_path / "dask") as c:
        got = compute_stats(src, executor=_KillingExecutor(src, c.scheduler_address))
    assert document_bytes(got) == want


def test_without_the_extra_or_a_scheduler_the_error_says_what_to_do(mnist_npz, monkeypatch):
    import imgnorm.cluster as cl
    mnist_npz = mnist_npz[0]
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("distributed", "dask"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz), "--scheduler", "local:2"])
    assert r.exit_code == 2 and "pip install 'imgnorm[dask]'" in r.output
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setattr(cl, "CONNECT_TIMEOUT", 1)
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz), "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 1 and "tcp://127.0.0.1:9" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz), "--scheduler", "local:0"])
    assert r.exit_code == 2 and "local:N" in r.output
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz), "--scheduler", "not an address"])
    assert r.exit_code == 2 and "tcp://host:8786" in r.output


def test_local_n_starts_and_stops_its_own_cluster(mnist_npz, tmp_path):
    mnist_npz = mnist_npz[0]
    out = tmp_path / "m.h5"
    r = CliRunner().invoke(cli, ["normalize", str(mnist_npz), "-o", str(out), "--scheduler", "local:2", "-q"])
    assert r.exit_code == 0, r.output
    x = np.load(mnist_npz)["x_train"]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/x"][...][..., 0], (x.astype(np.float32) / 255))


def _zarr_equals_h5(store, h5):
    zarr = pytest.importorskip("zarr")
    z = zarr.open_group(str(store), mode="r")
    with h5py.File(h5, "r") as f:
        for split in f:
            for key in ("x", "y"):
                assert z[split][key][...].tobytes() == f[split][key][...].tobytes(), (split, key)
        assert json.loads(f.attrs["stats"]) == z.attrs["stats"]


@pytest.mark.parametrize("options", [{}, {"splits": ["val"]}, {"on_error": "skip"}])
def test_workers_write_a_zarr_store_equal_to_the_one_process_hdf5(cluster, folder, tmp_path, monkeypatch, options):
    pytest.importorskip("zarr")
    if options.get("on_error") == "skip":  # a row that is not written: later rows move up
        (folder / "train" / "a" / "010b.jpg").write_bytes(b"not a jpeg")
    src = imgnorm.open_source(folder, size=(16, 16), on_error=options.get("on_error", "fail"))
    transform_to_hdf5(src, str(tmp_path / "one.h5"), "standardize", workers=1, **options)
    from imgnorm.zarr_store import ZarrWriter

    wrote = []
    real = ZarrWriter.finish_in_place

    def in_place(self, name, *args):  # called here once the workers have written a split's x
        wrote.append(name)
        return real(self, name, *args)

    monkeypatch.setattr(ZarrWriter, "finish_in_place", in_place)
    monkeypatch.setattr(DaskExecutor, "chunk", 5)  # several tasks per split, each whole chunks
    transform_to_hdf5(src, str(tmp_path / "d.zarr"), "standardize", executor=DaskExecutor(src, cluster), **options)
    _zarr_equals_h5(tmp_path / "d.zarr", tmp_path / "one.h5")
    if options.get("on_error") == "skip":
        with h5py.File(tmp_path / "one.h5") as f:
            assert f["train/x"].shape[0] == 30 and "010b.jpg" in f.attrs["skipped"]
    assert bool(wrote) == (options.get("on_error") != "skip")  # --on-error skip: written here instead
    assert sorted(os.listdir(tmp_path)) == ["d.zarr", "one.h5", "photos"]


def test_a_worker_killed_while_writing_a_zarr_store_or_parts_changes_nothing(tmp_path, rng, monkeypatch):
    pytest.importorskip("zarr")
    root = tmp_path / "p"
    for i in range(60):
        write_jpeg(root / ("a" if i % 2 else "b") / f"{i:03d}.jpg", rng, size=(64, 48))
    src = imgnorm.open_source(root)
    transform_to_hdf5(src, str(tmp_path / "one.h5"), "normalize", workers=1)
    monkeypatch.setattr(DaskExecutor, "chunk", 2)
    with local_cluster(tmp_path / "dask") as c:
        transform_to_hdf5(src, str(tmp_path / "k.zarr"), "normalize",
                          executor=_KillingExecutor(src, c.scheduler_address))
        transform_to_hdf5(src, str(tmp_path / "k.h5"), "normalize",
                          executor=_KillingExecutor(src, c.scheduler_address))
    _zarr_equals_h5(tmp_path / "k.zarr", tmp_path / "one.h5")
    for out in ("k.zarr", "k.h5"):
        r = CliRunner().invoke(cli, ["inspect", str(tmp_path / out), "--check", "-q"])
        assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "k.h5") as b:
        assert b["all/x"].is_virtual
        assert a["all/x"][...].tobytes() == b["all/x"][...].tobytes()
    assert all(n.endswith(".h5") for n in os.listdir(tmp_path / "k.h5.parts"))  # no unfinished part left


def test_on_a_cluster_an_hdf5_output_joins_the_workers_part_files(cluster, folder, tmp_path, monkeypatch):
    import imgnorm.store

    src = imgnorm.open_source(folder, size=(16, 16))
    transform_to_hdf5(src, str(tmp_path / "one.h5"), "standardize", workers=1, layout="nchw")
    monkeypatch.setattr(DaskExecutor, "chunk", 5)
    monkeypatch.setattr(imgnorm.store, "CHUNK_BYTES", 4 * 16 * 16 * 3 * 4)  # chunks of 4 images: parts of 4
    out = tmp_path / "d" / "out.h5"
    out.parent.mkdir()
    transform_to_hdf5(src, str(out), "standardize", executor=DaskExecutor(src, cluster), layout="nchw")
    parts = sorted(os.listdir(tmp_path / "d" / "out.h5.parts"))
    assert len(parts) > 2 and all(p.endswith(".h5") for p in parts)
    assert sorted(os.listdir(tmp_path / "d")) == ["out.h5", "out.h5.parts"]  # no temporary left
    # the pair moves together and opens from any directory (relative paths)
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "d", moved)
    monkeypatch.chdir("/")
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(moved / "out.h5") as b:
        assert b["train/x"].is_virtual
        for split in a:
            for key in a[split]:
                assert a[split][key][...].tobytes() == b[split][key][...].tobytes(), (split, key)
        assert a.attrs["stats"] == b.attrs["stats"]
    r = CliRunner().invoke(cli, ["inspect", str(moved / "out.h5"), "--check", "-q"])
    assert r.exit_code == 0 and "part file(s)" in r.output, r.output
    os.unlink(moved / "out.h5.parts" / parts[1])  # a missing part is an error, not silently the fill value
    r = CliRunner().invoke(cli, ["inspect", str(moved / "out.h5"), "--check", "-q"])
    assert r.exit_code == 1 and parts[1] in r.output and "Traceback" not in r.output
    with h5py.File(moved / "out.h5") as b:
        assert np.isnan(b[parts[1].split(".")[0]]["x"][...]).any()


def test_part_files_are_replaced_only_with_force_and_only_a_parts_folder(cluster, mnist_npz, tmp_path):
    path = str(mnist_npz[0])
    out = tmp_path / "m.h5"
    r = CliRunner().invoke(cli, ["center", path, "-o", str(out), "--scheduler", cluster, "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(out), "--scheduler", cluster, "-q"])
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(out), "--scheduler", cluster, "-q", "--force"])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f.attrs["method"] == "standardize" and abs(float(f["train/x"][...].mean())) < 1e-6
    other = tmp_path / "n.h5"
    (tmp_path / "n.h5.parts").mkdir()
    (tmp_path / "n.h5.parts" / "notes.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["standardize", path, "-o", str(other), "--scheduler", cluster, "-q", "--force"])
    assert r.exit_code == 2 and "part files" in r.output
    assert os.listdir(tmp_path / "n.h5.parts") == ["notes.txt"] and not other.exists()
    assert not [n for n in os.listdir(tmp_path) if "imgnorm-tmp" in n]


def test_a_local_cluster_that_cannot_start_is_named_as_such(mnist_npz, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", failing)
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz[0]), "--scheduler", "local:2"])
    assert r.exit_code == 1 and "could not start a local Dask cluster" in r.output
    assert "Nanny failed to start" in r.output and "Traceback" not in r.output


def test_workers_started_in_another_folder_find_the_relative_paths_given(cluster, folder, monkeypatch):
    with distributed.Client(cluster) as client:
        client.run(os.chdir, "/")  # as `dask worker` started anywhere else
    monkeypatch.chdir(folder.parent)
    src = imgnorm.open_source(folder.name)
    want = document_bytes(compute_stats(src, workers=1))
    assert document_bytes(compute_stats(src, executor=DaskExecutor(src, cluster))) == want


def test_a_cluster_that_cannot_load_the_tasks_is_a_clear_error(cluster, mnist_npz, monkeypatch):
    import imgnorm.cluster as cl

    def broken(*args):
        raise RuntimeError("Error during deserialization of the task graph. This frequently occurs if ...")

    src = imgnorm.open_source(mnist_npz[0])
    with DaskExecutor(src, cluster) as ex:
        monkeypatch.setattr(ex.client, "submit", lambda *a, **k: type("F", (), {"result": broken,
                                                                                "cancel": lambda self: None})())
        with pytest.raises(cl.SchedulerError, match="environment with this imgnorm"):
            list(ex.map(lambda s, t: t, [1, 2]))


def test_unfinished_part_files_of_a_task_that_died_are_dropped_before_commit(tmp_path):
    from imgnorm.pipeline import _drop_unfinished_parts
    from imgnorm.store import part_name, write_part

    write_part(str(tmp_path), "train", 0, np.zeros((3, 2), np.float32), chunk_rows=2, filters={})
    (tmp_path / (part_name("train", 3) + ".123.abcd1234.tmp")).write_bytes(b"half a part")
    _drop_unfinished_parts(str(tmp_path))
    assert os.listdir(tmp_path) == [part_name("train", 0)]
    with h5py.File(tmp_path / part_name("train", 0)) as f:
        assert f["x"].shape == (3, 2) and f["x"].chunks == (2, 2)


def test_a_worker_without_the_clients_folder_says_so():
    from imgnorm.cluster import _run_in
    from imgnorm.errors import SourceError

    with pytest.raises(SourceError, match="cannot enter the folder imgnorm runs in"):
        _run_in("/no/such/folder/anywhere", lambda s, t: None, None, None)


def test_a_local_cluster_needs_a_python_this_user_can_run(mnist_npz, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if mode == os.X_OK else real_access(p, mode, **k))
    r = CliRunner().invoke(cli, ["stats", str(mnist_npz[0]), "--scheduler", "local:2"])
    assert r.exit_code == 1 and "cannot run the Python interpreter" in r.output and "Traceback" not in r.output


def test_local_n_as_root_and_as_an_unprivileged_user(user, world_tmp, rng):
    import subprocess

    from conftest import NOBODY, open_to_all, run_imgnorm

    np.savez(world_tmp / "m.npz", x_train=rng.integers(0, 256, (30, 6, 6), dtype=np.uint8))
    open_to_all(world_tmp)
    one = run_imgnorm("stats", world_tmp / "m.npz", "--json", "-q", user=user)
    r = run_imgnorm("stats", world_tmp / "m.npz", "--json", "-q", "--scheduler", "local:2", user=user)
    prefix = NOBODY if user == "nobody" else []
    can_run = subprocess.run([*prefix, sys.executable, "-c", "import os, sys; print(os.access(sys.executable, "
                              "os.X_OK))"], capture_output=True, text=True).stdout.strip() == "True"
    if can_run:
        assert r.returncode == 0 and r.stdout == one.stdout, r.stderr
    else:  # this environment's Python sits where the user cannot go (a venv made from root's pyenv)
        assert r.returncode == 1 and "cannot run the Python interpreter" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_part_files_left_by_an_earlier_cluster_run_are_named_not_removed(cluster, mnist_npz, tmp_path):
    path = str(mnist_npz[0])
    out = tmp_path / "m.h5"
    assert CliRunner().invoke(cli, ["normalize", path, "-o", str(out), "--scheduler", cluster, "-q"]).exit_code == 0
    parts = sorted(os.listdir(tmp_path / "m.h5.parts"))
    r = CliRunner().invoke(cli, ["normalize", path, "-o", str(out), "-q", "--force"])  # written whole, here
    assert r.exit_code == 0 and "m.h5.parts" in r.output and "no longer uses them" in r.output, r.output
    assert sorted(os.listdir(tmp_path / "m.h5.parts")) == parts
    with h5py.File(out) as f:
        assert not f["train/x"].is_virtual


@pytest.fixture(params=["short", "long"])
def run_tmpdir(request, tmp_path):
    """An empty TMPDIR for a run: a short path, and one too long for the forkserver's
    socket (an AF_UNIX path holds 107 bytes: imgnorm's scratch then goes to /tmp)."""
    if request.param == "short":
        yield request.getfixturevalue("short_tmp")
        return
    tmp = tmp_path / ("t" * 40)
    tmp.mkdir()
    yield tmp


@pytest.mark.parametrize("scheduler", [None, "local:2"])
def test_a_run_leaves_nothing_in_the_temporary_folder(mnist_npz, tmp_path, scheduler, run_tmpdir):
    # multiprocessing's folder for the forkserver's socket and Dask's scratch space
    # are the run's temporaries too: gone when the command returns
    tmp = run_tmpdir
    env = {**os.environ, "TMPDIR": str(tmp)}
    extra = ["--scheduler", scheduler] if scheduler else []
    runs = ((["stats", mnist_npz[0], "--json", "-q"], 0), (["normalize", mnist_npz[0], "-o", tmp_path / "m.h5", "-q"], 0),
            (["stats", mnist_npz[0], "--size", "0x3"], 2))  # the forkserver started, then a usage error
    in_tmp = set(os.listdir("/tmp"))  # where the scratch goes when TMPDIR's path is too long for a socket
    for args, code in runs:
        r = run_imgnorm(*args[:2], *extra, *args[2:], env=env)
        assert r.returncode == code, r.stderr
        assert os.listdir(tmp) == [], args
        assert [n for n in set(os.listdir("/tmp")) - in_tmp if n.startswith("imgnorm-dask-")] == []
        deadline = time.monotonic() + 5  # the forkserver ends when it sees its parent gone
        while (left := _processes_with_env("TMPDIR", str(tmp))) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert left == [], args


def _processes_with_env(name: str, value: str) -> list[str]:
    """Command lines of the live processes whose environment has name=value."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"{name}={value}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_scratch_folders_of_killed_runs_are_removed_by_the_next_one(tmp_path, monkeypatch):
    import fcntl
    import tempfile
    from imgnorm import cluster as cl

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = time.time() - 2 * cl.STALE_AFTER
    for name in ("imgnorm-dask-dead", "imgnorm-dask-live", "imgnorm-dask-young", "other-dead"):
        (tmp_path / name / "worker-x").mkdir(parents=True)
        if name != "imgnorm-dask-young":
            os.utime(tmp_path / name, (old, old))
    live = os.open(tmp_path / "imgnorm-dask-live", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(live, fcntl.LOCK_EX)  # a run in progress holds its folder
    try:
        path, fd = cl._make_scratch()
        os.close(fd)
    finally:
        os.close(live)
    left = sorted(os.listdir(tmp_path))
    assert os.path.basename(path) in left
    left.remove(os.path.basename(path))
    assert left == ["imgnorm-dask-live", "imgnorm-dask-young", "other-dead"]


@pytest.fixture
def short_tmp():
    """An empty folder directly in /tmp: short enough a path for the forkserver's socket."""
    import shutil
    import tempfile
    tmp = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_a_killed_local_cluster_run_leaves_a_scratch_folder_the_next_run_removes(mnist_npz, short_tmp, tmp_path,
                                                                                 rng):
    # no process outlives it, and the forkserver's socket is in its folder, so nothing else is left
    import subprocess
    from conftest import imgnorm_cmd
    from imgnorm.cluster import STALE_AFTER

    tmp, mnist = short_tmp, mnist_npz[0]
    big = tmp_path / "big.jpg"  # 40 links to it: seconds of decoding, killed in the middle
    write_jpeg(big, rng, size=(2000, 2000))
    for i in range(40):
        (tmp_path / "slow" / "c").mkdir(parents=True, exist_ok=True)
        os.symlink(big, tmp_path / "slow" / "c" / f"{i}.jpg")
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(imgnorm_cmd("stats", tmp_path / "slow", "--scheduler", "local:2", "-q", "--json"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_processes_with_env("TMPDIR", str(tmp))) < 4:  # imgnorm, its resource tracker, forkserver, a worker
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10  # they end on their own when they see the parent gone
    while (left := _processes_with_env("TMPDIR", str(tmp))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert left == []
    (scratch,) = killed = os.listdir(tmp)  # no pymp-* beside it
    assert scratch.startswith("imgnorm-dask-"), killed
    old = time.time() - 2 * STALE_AFTER
    os.utime(tmp / scratch, (old, old))
    r = run_imgnorm("stats", mnist, "--scheduler", "local:2", "-q", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp) == []


def test_a_temporary_folder_too_long_for_a_socket_is_a_clear_error(monkeypatch):
    from multiprocessing import process
    from imgnorm import cluster as cl
    monkeypatch.setitem(process.current_process()._config, "tempdir", None)
    monkeypatch.setattr(cl, "_process_scratch", ("/" + "t" * 100, -1))
    with pytest.raises(cl.SchedulerError, match=r"too long for one; set TMPDIR to a shorter path"):
        cl._multiprocessing_files_in_scratch()


@pytest.mark.parametrize("scheduler, starts", [("local:2", True), ("local", True), ("tcp://127.0.0.1:1", False),
                                               (None, False), ("local:0", False)])
def test_the_command_line_starts_the_workers_forkserver_as_soon_as_it_sees_local(scheduler, starts):
    import subprocess
    code = ("import sys, multiprocessing.forkserver as fs; from imgnorm.cluster import prestart; "
            f"prestart({scheduler!r}); print(fs._forkserver._forkserver_pid is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(starts), out.stderr


def test_the_scheduler_option_and_its_variable_reach_prestart(monkeypatch, tmp_path):
    from imgnorm import cluster as cl
    seen = []
    monkeypatch.setattr(cl, "prestart", seen.append)
    missing = str(tmp_path / "missing")
    CliRunner().invoke(cli, ["stats", missing, "--scheduler", "local:2"])
    CliRunner().invoke(cli, ["stats", missing], env={"IMGNORM_SCHEDULER": "local"})
    CliRunner().invoke(cli, ["stats", missing])
    assert seen == ["local:2", "local"]
