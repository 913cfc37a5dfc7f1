"""Running a pass's tasks on Dask: a cluster's workers instead of the built-in pool.

:class:`DaskExecutor` has the shape of :class:`imgnorm.workers.LocalExecutor`:
``map(fn, tasks)`` runs ``fn(source, task)`` for each task and yields the
results in task order, so the pipeline merges them exactly as it does the
pool's: the statistics are exact integer sums, and a stats document from a
cluster is byte for byte the one a single process writes, whatever the
number of workers or tasks, and when a worker dies (Dask runs its tasks
again elsewhere).

What travels: the source's description once (file names, how to read
them; sent to the workers as a task's result), a task's few numbers, and its result
(statistics: some KB; for the write commands, the pixels of the batch,
which this process writes). Workers read the images themselves, so they
need the same paths: a shared file system on a real cluster.

``dask`` and ``distributed`` are the optional extra ``imgnorm[dask]``.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
import sys
import tempfile
import time
from functools import partial
from typing import Callable, Iterable, Iterator

from .errors import ImgnormError, MissingExtraError, OptionError

EXTRA = "pip install 'imgnorm[dask]'"
CONNECT_TIMEOUT = 10  # seconds; dask's own default is 30
# Tasks submitted ahead of the one whose result is awaited, per worker: enough
# to keep every worker busy, few enough that results (pixels, for the write
# commands) do not pile up in the workers' memory.
AHEAD_PER_WORKER = 4
# What the forkserver imports once for every worker forked from it.
FORKSERVER_PRELOAD = ["imgnorm.pipeline", "imgnorm.decode", "distributed.nanny", "distributed.worker"]


# A LocalCluster's workers: no statistical profiler (a thread sampling every
# task's stack every 10 ms, which costs decoding a third of its speed here).
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


SCRATCH_PREFIX = "imgnorm-dask-"
STALE_AFTER = 60  # seconds: a scratch folder this old and unlocked is a killed run's
# The longest path multiprocessing's socket may have there (an AF_UNIX address holds 107 bytes).
_SOCKET_ROOM = 107 - len("/listener-12345678")


def _make_scratch(top: str | None = None) -> tuple[str, int]:
    """A new scratch folder in ``top`` (TMPDIR) and a descriptor locking it, after
    removing those of killed runs (old, and their lock free)."""
    top = top or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(top) if n.startswith(SCRATCH_PREFIX)]
    except OSError:
        names = []
    for name in names:
        path = os.path.join(top, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or time.time() - st.st_mtime < STALE_AFTER:
                continue  # another user's, or one just made whose owner has not locked it yet
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner holds the lock: a run in progress
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=top)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # no locks here: it is then never taken for stale
    return path, fd


_process_scratch: tuple[str, int] | None = None  # (folder, locked descriptor), made once


def process_scratch() -> str:
    """This process's folder for Dask's and multiprocessing's files, locked while it lives.

    Dask's default (TMPDIR/dask-scratch-space) and multiprocessing's
    (TMPDIR/pymp-*, the forkserver's socket) outlive a killed run; this one
    is removed at exit (:func:`remove_process_scratch`), or by the next run
    when the process was killed.
    """
    global _process_scratch
    if _process_scratch is None:
        top = tempfile.gettempdir()
        if len(os.fsencode(os.path.join(top, SCRATCH_PREFIX + "12345678"))) > _SOCKET_ROOM and os.access(
                "/tmp", os.W_OK | os.X_OK):
            top = "/tmp"  # TMPDIR's path is too long for the forkserver's socket
        _process_scratch = _make_scratch(top)
        atexit.register(remove_process_scratch)
    return _process_scratch[0]


def remove_process_scratch() -> None:
    global _process_scratch
    if _process_scratch is not None:
        path, fd = _process_scratch
        _process_scratch = None
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _multiprocessing_files_in_scratch() -> None:
    """Have multiprocessing put its files (the forkserver's socket) in :func:`process_scratch`,
    unless it has a folder already."""
    from multiprocessing import process

    config = getattr(process.current_process(), "_config", None)
    if not isinstance(config, dict) or config.get("tempdir") is not None:
        return
    folder = process_scratch()
    if len(os.fsencode(folder)) > _SOCKET_ROOM:
        raise SchedulerError(f"--scheduler local needs a socket in the temporary folder, and its path "
                             f"{folder} is too long for one; set TMPDIR to a shorter path")
    config["tempdir"] = folder


def _prepare_worker() -> None:
    """Run once in every worker: the allocator settings of imgnorm's own process (see
    :func:`imgnorm.workers.tune_malloc`: batch buffers reused, not page-faulted afresh)."""
    from .workers import tune_malloc

    tune_malloc()


def _run_in(cwd: str, fn: Callable, source, task):
    """Run ``fn(source, task)`` in the client's working directory: the paths a user
    gives are relative to it, and a worker started elsewhere (``dask worker`` in
    another folder or on another machine) would not find them."""
    try:
        here = os.getcwd()
    except OSError:  # the worker's own folder was removed
        here = None
    if here != cwd:
        try:
            os.chdir(cwd)
        except OSError as e:
            from .errors import SourceError

            raise SourceError(f"a Dask worker cannot enter the folder imgnorm runs in ({cwd}: {e.strerror}); give "
                              "absolute paths on a file system the workers share") from None
    return fn(source, task)


def _check_interpreter_runs() -> None:
    """A LocalCluster's workers are new processes of this Python: refuse at once,
    saying why, when this user cannot run it (a virtual environment made from a
    Python inside another user's home), instead of Dask's "Nanny failed to start"."""
    import multiprocessing.spawn

    exe = os.fsdecode(multiprocessing.spawn.get_executable())
    if not os.access(exe, os.X_OK):
        raise SchedulerError(f"--scheduler local cannot start worker processes: this user cannot run the Python "
                             f"interpreter {exe} (a link into a folder it cannot enter?); use a Python this user "
                             "can run, a running cluster (tcp://...), or no --scheduler for the built-in pool")


def _version() -> str:
    from . import __version__

    return __version__


def _given(value):
    """A task whose result is its argument: how the source reaches the workers."""
    return value


def start_forkserver() -> None:
    """Start the server the LocalCluster's worker processes are forked from, if not yet running.

    Workers are forked from a server process that imported the reading code
    once (forkserver): not from this one, whose threads (Dask's event loop)
    could hold a lock at the fork, and each does not import everything again.
    Starting it returns at once; it imports in parallel with this process,
    which is why the command line calls this as soon as it sees
    ``--scheduler local`` (about 0.17 s of a run's start-up saved).
    """
    import multiprocessing
    import multiprocessing.forkserver

    _multiprocessing_files_in_scratch()
    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    multiprocessing.forkserver.ensure_running()


def prestart(scheduler: str | None) -> None:
    """For ``--scheduler local[:N]``: start the forkserver now, while imgnorm and Dask import here.

    Does nothing for other values, without the extra, or when this user cannot
    run the interpreter (the command says why later, when it opens the cluster).
    """
    import importlib.util

    try:
        if not scheduler or parse_scheduler(scheduler)[0] != "local":
            return
        if importlib.util.find_spec("distributed") is None:
            return
        _check_interpreter_runs()
        start_forkserver()
    except Exception:  # said when the cluster is opened (DaskExecutor), not from the option's parsing
        return


class SchedulerError(ImgnormError):
    """The Dask scheduler cannot be reached or the cluster cannot start."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """``("local", n or None)`` for ``local`` / ``local:N``, else ``("address", None)`` for a scheduler address."""
    text = text.strip()
    m = re.fullmatch(r"local(?::(\d+))?", text)
    if m:
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and n < 1:
            raise OptionError(f"--scheduler {text}: local:N needs N of 1 or more", option="--scheduler")
        return "local", n
    if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+|[\w.\-]+:\d+", text):
        raise OptionError(f"--scheduler {text!r} is not local, local:N or a scheduler address such as "
                          "tcp://host:8786", option="--scheduler")
    return "address", None


def _need_dask():
    try:
        import distributed  # noqa: F401
        return distributed
    except ImportError:
        raise MissingExtraError(f"--scheduler runs on Dask, which is not installed: {EXTRA}",
                                option="--scheduler") from None


class DaskExecutor:
    """Runs ``fn(source, task)`` for each task on a Dask cluster, results in task order.

    Parameters
    ----------
    source : Source
        Sent to every worker once.
    scheduler : str
        ``local`` / ``local:N`` (a LocalCluster of N worker processes, default
        one per core) or the address of a running scheduler (``tcp://host:8786``).
    show : bool
        Print the dashboard's address on stderr, where there is one.
    """

    parallel = True
    writes_in_place = True  # a Zarr output's chunks are written by the workers, not sent here
    chunk = 64  # images per decoding task at least: a Dask task costs ms to schedule, a pool task far less

    def __init__(self, source, scheduler: str, *, show: bool = False):
        self.source = source
        self.kind, self.n = parse_scheduler(scheduler)
        self.scheduler = scheduler
        self.show = show
        self.client = self.cluster = self._source = None
        self._scratch = None  # a LocalCluster's folder, in process_scratch()

    def __enter__(self) -> "DaskExecutor":
        self._depth = getattr(self, "_depth", 0) + 1
        if self.client is not None:  # entered already (by the caller, then by the pipeline)
            return self
        distributed = _need_dask()
        import dask

        if self.kind == "local":
            _check_interpreter_runs()
            start_forkserver()

        try:
            if self.kind == "local":
                n = self.n or len(os.sched_getaffinity(0))
                self._scratch = tempfile.mkdtemp(prefix="cluster-", dir=process_scratch())
                with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver",
                                      "temporary-directory": self._scratch, **WORKER_CONFIG}):
                    self.cluster = distributed.LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                        silence_logs=50, worker_dashboard_address=None, local_directory=self._scratch)
                self.client = distributed.Client(self.cluster, timeout=CONNECT_TIMEOUT)
            else:
                with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT}s"}):
                    self.client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self._close()
            raise SchedulerError(f"cannot reach the Dask scheduler at {self.scheduler} within {CONNECT_TIMEOUT} s "
                                 f"({_first_line(e)}); start it (dask scheduler) or check the address") from None
        except Exception as e:  # something answered that is not a Dask scheduler (garbage frames: MemoryError...)
            self._close()
            if self.kind == "local":  # our own LocalCluster did not come up (a worker failed to start)
                raise SchedulerError(f"could not start a local Dask cluster for --scheduler {self.scheduler} "
                                     f"({type(e).__name__}: {_first_line(e)}); run without --scheduler to use "
                                     "the built-in pool") from None
            raise SchedulerError(f"{self.scheduler} did not answer as a Dask scheduler ({type(e).__name__}: "
                                 f"{_first_line(e)}); check the address and port") from None
        except BaseException:
            self._close()
            raise
        if self.show:
            link = getattr(self.client, "dashboard_link", None)
            if link:
                print(f"dask: {len(self.workers())} worker(s), dashboard {link}", file=sys.stderr, flush=True)
        self.client.run(_prepare_worker)
        # The source as a task's result, not scattered data: when the workers holding it
        # die, the scheduler makes it again from the task (scattered data would be lost
        # for good, and every task after it would fail).
        self._source = self.client.submit(_given, self.source, pure=False)
        # About 32 tasks per worker and split, each of at least 64 images: the scheduler's
        # work (in this process, on the cores that decode) stays small, the last task short.
        images = max((len(s) for s in self.source.splits.values()), default=0)
        self.chunk = max(type(self).chunk, images // (32 * max(1, len(self.workers()))))
        return self

    def workers(self) -> list:
        return list(self.client.scheduler_info().get("workers", {}))

    def map(self, fn: Callable, tasks: Iterable) -> Iterator:
        """Results of ``fn(source, task)`` in task order; a failed task raises its error here."""
        tasks = list(tasks)
        fn = partial(_run_in, os.getcwd(), fn)
        window = max(2, AHEAD_PER_WORKER * max(1, len(self.workers())))
        futures = {}
        try:
            for i in range(min(window, len(tasks))):
                futures[i] = self.client.submit(fn, self._source, tasks[i], pure=False)
            for i in range(len(tasks)):
                try:
                    result = futures.pop(i).result()
                except RuntimeError as e:
                    if "deserializ" not in str(e):
                        raise
                    raise SchedulerError(f"the Dask cluster at {self.scheduler} cannot load imgnorm's tasks "
                                         f"({_first_line(e)}); run its scheduler and workers in an environment "
                                         f"with this imgnorm ({_version()}) installed") from None
                if i + window < len(tasks):
                    futures[i + window] = self.client.submit(fn, self._source, tasks[i + window], pure=False)
                yield result
        finally:
            for f in futures.values():
                f.cancel()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._depth -= 1
        if self._depth <= 0:
            self._close()

    def _close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing after a failure: nothing more to do
                    pass
        self.client = self.cluster = self._source = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
