"""Running the tasks of a pass: forked worker processes, a read-ahead thread,
progress. Used only by :mod:`imgnorm.pipeline`.

An executor runs ``fn(source, task)`` for each task of a pass and yields the
results in task order. :class:`LocalExecutor` runs them in this process or in
worker processes forked with the source in memory, so a task travels as a few
numbers; another executor (Dask, see the pipeline) runs the same functions.

Worker processes cannot outlive the run: each asks the kernel to kill it when
its parent dies (``PR_SET_PDEATHSIG``), closes every file descriptor it
inherited but its own pipe (so its siblings' pipes, the caller's stdout and
the output's lock are not held by it), and ends when its pipe closes.
"""

from __future__ import annotations

import ctypes
import gc
import os
import queue
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from multiprocessing.connection import Pipe
from typing import Callable, Iterable, Iterator

from .errors import ImgnormError, ImgnormWarning
from .interrupts import held


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_count(requested: int | None, items: int) -> int:
    """Processes to use: ``requested`` (default: every core), at most one per core and per item.

    More than the cores would only contend for them; a user's larger number
    is capped with a warning rather than forking hundreds of processes.
    """
    cores = default_workers()
    n = max(1, min(requested or cores, cores, items))
    if requested and requested > n:
        why = f"{cores} core(s)" if n == cores else f"{items} image(s) to read"
        warnings.warn(ImgnormWarning(f"--workers {requested} is more than there are {why}; using {n}"),
                      stacklevel=3)
    return n


class LocalExecutor:
    """Runs ``fn(source, task)`` for each task, in order, here or in forked workers.

    Parameters
    ----------
    source : Source
        What every task reads; worker processes inherit it when they fork.
    workers : int, optional
        Worker processes for sources that decode (image folders); default:
        every core. Sources whose reading is cheap (arrays) run in this
        process. The results never depend on it.
    items : int, optional
        How many images the run reads at most (caps the workers, with a warning).
    tasks : int, optional
        How many tasks the largest pass has (caps the workers silently).

    Use as a context manager, entered in the main thread before other threads
    start: the workers fork on entering, so that no other thread can hold a
    lock (an import, an allocator) at the moment of the fork.
    """

    def __init__(self, source, workers: int | None = None, *, items: int | None = None, tasks: int | None = None):
        self.source = source
        self.processes = 1
        if source.decodes:
            n = worker_count(workers, items if items is not None else _decoding_items(source))
            self.processes = min(n, tasks) if tasks is not None else n  # no idle worker to fork
        self._pool: _Pool | None = None

    def __enter__(self) -> "LocalExecutor":
        if self.processes > 1:
            self._pool = _Pool(self.source, self.processes)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()
            else:
                self._pool.kill()
            self._pool = None

    @property
    def parallel(self) -> bool:
        """Whether tasks run in other processes (so results carry no pixels unless asked)."""
        return self._pool is not None

    def map(self, fn: Callable, tasks: Iterable) -> Iterator:
        if self._pool is None:
            return (fn(self.source, t) for t in tasks)
        return self._pool.imap(fn, list(tasks))


def _decoding_items(source) -> int:
    return sum(len(s) for s in source.splits.values())


# ------------------------------------------------------------ the pool


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the pipe's EOF still ends the worker
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def in_child(fn, *args):
    """``fn(*args)`` computed in a forked child process and its result (or its
    exception) returned here, pickled through a pipe.

    For work whose transient memory should never become this process's: the
    child's heap goes with it, and worker processes forked later do not carry
    its leftovers. Runs ``fn`` here instead when other threads exist (a fork
    would copy whatever locks they hold) or fork is unavailable.
    """
    import pickle

    if not hasattr(os, "fork") or threading.active_count() > 1:
        return fn(*args)
    parent = os.getpid()
    r, w = os.pipe()
    with held():  # not inside fork's at-fork callbacks; the child never leaves (os._exit)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                _die_with_parent(parent)
                try:
                    out = (True, fn(*args))
                except BaseException as e:  # sent back whole when it pickles, as an ImgnormError otherwise
                    out = (False, e)
                with os.fdopen(w, "wb") as pipe:
                    try:
                        pickle.dump(out, pipe)
                    except Exception:
                        pickle.dump((False, ImgnormError(f"{type(out[1]).__name__}: {out[1]}")), pipe)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            data = pipe.read()
    finally:
        os.waitpid(pid, 0)
    try:
        ok, value = pickle.loads(data)
    except Exception:  # the child died before answering (killed, out of memory)
        raise ImgnormError("a helper process ended without an answer; run again") from None
    if not ok:
        raise value
    return value


class _Pool:
    """Worker processes with one pipe each and results in task order.

    Unlike ``multiprocessing.Pool`` there are no locks shared between
    processes, so killing the workers on Ctrl-C or an error can never
    deadlock the parent: task k goes to worker k mod n, and each worker has
    at most ``depth`` tasks queued.
    """

    def __init__(self, source, n: int, depth: int = 2):
        self.depth = depth
        self.conns, self.pids = [], []
        try:
            for _ in range(n):
                self._fork(source)
        except BaseException:
            self.kill()
            raise

    def _fork(self, source) -> None:
        mine, theirs = Pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        # Held: a signal now would land in fork's at-fork callbacks, where Python
        # ignores the exception; the child never leaves the block (it ends in
        # os._exit), so one that reaches it before its handlers are reset waits for ever.
        with held():
            pid = os.fork()
            if pid == 0:
                _child(source, theirs, parent)  # does not return
            self.conns.append(mine)
            self.pids.append(pid)
        theirs.close()

    def imap(self, fn, tasks: list) -> Iterator:
        n = len(self.conns)
        sent = 0
        for k in range(len(tasks)):
            try:
                while sent < len(tasks) and sent < k + n * self.depth:
                    self.conns[sent % n].send((fn, tasks[sent]))
                    sent += 1
                ok, result = self.conns[k % n].recv()
            except (EOFError, OSError):  # the pipe of a worker that is gone
                raise ImgnormError("a decoding worker process died (out of memory?); "
                                   "try fewer --workers or a smaller --batch-size") from None
            if not ok:
                raise result
            yield result

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for pid in self.pids:
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.002)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        self.pids = []
        self.kill()

    def kill(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for c in self.conns:
            c.close()
        self.pids, self.conns = [], []


def _child(source, conn, parent: int) -> None:
    """A worker's life, from the fork to ``os._exit``: never back into the parent's code."""
    code = 0
    try:
        gc.freeze()  # the parent's objects are never finalized here (they may own closed fds)
        _die_with_parent(parent)
        keep = conn.fileno()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        _worker_main(source, conn)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _worker_main(source, conn) -> None:
    """Run tasks from ``conn`` until told to stop or the parent goes away."""
    # Ctrl-C reaches the whole process group: the parent handles it and kills
    # the workers, so they stay quiet instead of printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, task = msg
        try:
            reply = (True, fn(source, task))
        except Exception as e:  # sent back and raised in the parent
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # an exception that does not pickle
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


# ------------------------------------------------------------ read-ahead and progress


def ahead(items: Iterator, fn: Callable, depth: int = 1) -> Iterator:
    """``fn(item)`` for each item, computed in a background thread up to
    ``depth`` items ahead of the consumer, in order.

    Exceptions in the thread are raised here; if the consumer stops early
    (an error, Ctrl-C) the thread stops too and closes ``items``.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(v) -> bool:
        while not stop.is_set():
            try:
                q.put(v, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        it = iter(items)
        try:
            for item in it:
                if stop.is_set() or not put((True, fn(item))):
                    break
            else:
                put((True, done))
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, name="imgnorm-ahead", daemon=True)
    t.start()
    try:
        while True:
            ok, v = q.get()
            if not ok:
                raise v
            if v is done:
                return
            yield v
    finally:
        stop.set()
        t.join()


class _NoBar:
    """What progress() gives when nothing is drawn: no tqdm import, no thread."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


class _LogBar(_NoBar):
    """Progress as a line on stderr every few seconds: for CI logs and files, where a bar would be noise."""

    EVERY = 5.0

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.EVERY:
            self.last = now
            self._say(now)

    def __exit__(self, exc_type, *exc):
        if exc_type is None and self.last != self.start:  # a closing line, only for runs long enough to log
            self._say(time.monotonic())
        return False

    def _say(self, now: float) -> None:
        rate = self.n / max(now - self.start, 1e-9)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        try:
            print(f"{self.desc}: {self.n:,}/{self.total:,} images{share}, {now - self.start:.0f} s, "
                  f"{rate:,.0f} images/s", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr gone: progress is not worth failing for
            pass


PROGRESS = ("auto", "bar", "log", "none")


def progress(total: int, desc: str, show: bool | str):
    """Progress on stderr: ``"bar"`` (tqdm), ``"log"`` (a line every few seconds),
    ``"none"``; ``"auto"`` (or True) draws a bar on a terminal and logs elsewhere."""
    mode = "auto" if show is True else "none" if show is False else show
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "log":
        return _LogBar(total, desc)
    if mode != "bar":
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------ the process's settings


def tune_malloc() -> bool:
    """Keep freed batch buffers in the heap for the next batch (glibc only).

    By default glibc maps each block above 128 KiB afresh and unmaps it when
    freed (the threshold adapts, but heap tops above 2x it are trimmed), so
    batch after batch of 1-4 MiB buffers page-faults every page again; on a
    virtual machine a first touch costs a few microseconds. On the MNIST run
    this cut page faults in the statistics pass from ~7,000 to ~1,600. Returns
    whether the settings were taken.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 64 << 20) and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # not glibc: leave the allocator alone
        return False


# ------------------------------------------------------------ BLAS threads


def _openblas_threads():
    """``(get, set)`` of the OpenBLAS numpy loaded, or None (another BLAS, or none found)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    put.argtypes, put.restype, get.restype = [ctypes.c_int], None, ctypes.c_int
                    return get, put
    return None


@contextmanager
def blas_on_all_cores():
    """Let OpenBLAS use every core for the block inside, where imgnorm's
    ``__main__`` held it to one thread (a user's OPENBLAS_NUM_THREADS is kept)."""
    handle = _openblas_threads() if os.environ.get("IMGNORM_BLAS_ONE_THREAD") == "1" else None
    if handle is None:
        yield
        return
    get, put = handle
    before = get()
    put(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        put(before)
