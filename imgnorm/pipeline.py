"""source -> statistics -> transform -> store: the one place that knows about
worker processes and progress bars."""

from __future__ import annotations

import multiprocessing
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from .sources import Batch, FolderSplit, Source, Split
from .stats import RunningStats, stats_document

DEFAULT_BATCH_SIZE = 64
# Images per task sent to a decoding worker: small enough to balance two
# cores over a few hundred files, large enough that task overhead is noise.
WORKER_CHUNK = 16


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def progress(total: int, desc: str, show: bool):
    """A tqdm bar on stderr, drawn only when asked and stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False,
                disable=not show or not sys.stderr.isatty(), dynamic_ncols=True)


# Worker processes get the split once, through the pool initializer, instead
# of with every task.
_WORKER_SPLIT: Split | None = None


def _init_worker(split: Split):
    global _WORKER_SPLIT
    _WORKER_SPLIT = split


def _stats_task(args) -> tuple[RunningStats, list]:
    start, stop, channels, dtype, on_error = args
    batch = _WORKER_SPLIT.read(start, stop, on_error)
    return RunningStats(channels, dtype).update(batch.images), batch.skipped


def _read_task(args) -> Batch:
    start, stop, on_error = args
    return _WORKER_SPLIT.read(start, stop, on_error)


@contextmanager
def _mapper(split: Split, workers: int, n_tasks: int) -> Iterator[Callable]:
    """An ordered ``map`` over tasks: a process pool for image folders, else in-process."""
    if workers > 1 and isinstance(split, FolderSplit) and n_tasks > 1:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        pool = ctx.Pool(min(workers, n_tasks), initializer=_init_worker, initargs=(split,))
        try:
            yield lambda fn, tasks: pool.imap(fn, tasks)
        finally:
            pool.terminate()
            pool.join()
    else:
        def serial(fn, tasks):
            _init_worker(split)
            return map(fn, tasks)
        yield serial


def _ranges(n: int, step: int) -> list[tuple[int, int]]:
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def split_stats_pass(source: Source, split: Split, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     workers: int | None = None, on_error: str = "fail",
                     show_progress: bool = False) -> tuple[RunningStats, list]:
    """One streaming pass over a split: its :class:`RunningStats` and the files skipped."""
    workers = workers or default_workers()
    step = WORKER_CHUNK if workers > 1 and isinstance(split, FolderSplit) else batch_size
    step = min(step, batch_size)
    tasks = [(a, b, source.channels, source.dtype, on_error) for a, b in _ranges(len(split), step)]
    total = RunningStats(source.channels, source.dtype)
    skipped: list = []
    with progress(len(split), f"stats {split.name}", show_progress) as bar, \
            _mapper(split, workers, len(tasks)) as imap:
        for (a, b, *_), (part, skip) in zip(tasks, imap(_stats_task, tasks)):
            total.merge(part)
            skipped.extend(skip)
            bar.update(b - a)
    return total, skipped


def compute_stats(source: Source, *, split: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int | None = None, on_error: str = "fail", show_progress: bool = False) -> dict:
    """Statistics of every split of ``source`` (or of one), as a stats document.

    Parameters
    ----------
    source : Source
        From :func:`imgnorm.sources.open_source`.
    split : str, optional
        Only this split.
    batch_size : int
        Images held in memory at once (per worker).
    workers : int, optional
        Decoding processes for image folders; default: all cores.  The result
        does not depend on it.
    """
    names = [source.split(split).name] if split else list(source.splits)
    results, skipped = {}, []
    for name in names:
        results[name], sk = split_stats_pass(source, source.splits[name], batch_size=batch_size,
                                             workers=workers, on_error=on_error, show_progress=show_progress)
        skipped.extend(sk)
    fit = source.fit_split if source.fit_split in results else names[0]
    return stats_document(source=os.path.abspath(source.path), color=source.color, channels=source.channels,
                          max_value=source.max_value, splits=results, fit_split=fit, skipped=skipped)
