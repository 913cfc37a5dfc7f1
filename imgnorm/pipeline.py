"""source -> statistics -> transform -> store: the one place that knows about
worker processes and progress bars."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import queue
import sys
import threading
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import numpy as np

from .errors import ImageError, ImgnormError, OptionError, SourceError, StatsFileError
from .sources import Batch, FolderSplit, Source, Split
from .stats import RunningStats, stats_document
from .transforms import imagenet_fit, need_max_value

DEFAULT_BATCH_SIZE = None  # automatic: see batch_rows()
# Automatic batches: images of a known shape come in batches of about this
# many bytes as float32 (MNIST images are tiny, so batches of 64 would spend
# their time in per-call overhead; 224x224 RGB ones would hold 40 MB each);
# images of unknown sizes come this many at a time.
BATCH_BYTES = 4 << 20
# The HDF5 writer's chunk size (store.CHUNK_BYTES, not imported here: it
# would import h5py). Automatic batches are whole chunks of float32 output,
# so that the writer hands full chunks straight to the file.
CHUNK_BYTES = 1 << 20
FOLDER_BATCH = 64
# A fit split whose decoded pixels fit in this is cached in memory, not on disk.
IN_MEMORY_CACHE = 128 << 20
# Images per task sent to a decoding worker: small enough to balance two
# cores over a few hundred files, large enough that task overhead is noise.
WORKER_CHUNK = 16


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _NoBar:
    """What progress() gives when nothing is drawn: no tqdm import, no thread."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def progress(total: int, desc: str, show: bool):
    """A tqdm bar on stderr, drawn only when asked and stderr is a terminal."""
    if not show or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)


# Worker processes inherit the splits (by name) when they fork, instead of
# receiving them with every task.
_WORKER_SPLITS: dict[str, Split] = {}


def _stats_task(args, splits: dict[str, Split] | None = None) -> tuple[RunningStats, list]:
    """Statistics of images start:stop of a split; the pixels themselves stay in the worker."""
    name, start, stop, channels, dtype, on_error = args
    rs = RunningStats(channels, dtype)
    batch = (splits or _WORKER_SPLITS)[name].read(start, stop, on_error, visit=rs.update, keep=False)
    return rs, batch.skipped


def _read_task(args, splits: dict[str, Split] | None = None) -> tuple[Batch, RunningStats | None]:
    """Images start:stop of a split, and their statistics when asked (computed as each is decoded)."""
    name, start, stop, on_error, stats_of = args
    rs = RunningStats(*stats_of) if stats_of else None
    split = (splits or _WORKER_SPLITS)[name]
    return split.read(start, stop, on_error, visit=rs.update if rs else None), rs


def _worker_main(splits: dict[str, Split], conn) -> None:
    """Run tasks from ``conn`` until told to stop or the parent goes away."""
    global _WORKER_SPLITS
    import signal
    # Ctrl-C reaches the whole process group: the parent handles it and kills
    # the workers, so they stay quiet instead of printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_SPLITS = splits
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = (True, fn(args))
        except Exception as e:  # sent back and raised in the parent
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # an exception that does not pickle
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class WorkerPool:
    """Decoding processes with one pipe each and results in task order.

    Unlike ``multiprocessing.Pool`` there are no locks shared between
    processes, so killing the workers on Ctrl-C or an error can never
    deadlock the parent: task k goes to worker k mod n, and each worker has
    at most ``depth`` tasks queued.
    """

    def __init__(self, splits: dict[str, Split], n: int, depth: int = 2):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.depth = depth
        self.conns, self.procs = [], []
        try:
            for _ in range(n):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(splits, child), daemon=True)
                p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
        except BaseException:
            self.kill()
            raise

    def imap(self, fn, tasks) -> Iterator:
        tasks = list(tasks)
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
        for p in self.procs:
            p.join(timeout=5)
        self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join()
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []


def _forks_workers(split: Split, workers: int | None, n_tasks: int = 2) -> bool:
    """Whether reading ``split`` runs in worker processes (image folders on several cores)."""
    return (workers or default_workers()) > 1 and isinstance(split, FolderSplit) and n_tasks > 1


@contextmanager
def _mapper(splits: dict[str, Split], workers: int, n_tasks: int) -> Iterator[Callable]:
    """An ordered ``map`` over tasks: worker processes for image folders, else in-process.

    One pool serves every split in ``splits``: no start-up per split, and no
    idle worker at a split's end while tasks of the next are waiting.
    """
    if any(_forks_workers(s, workers, n_tasks) for s in splits.values()):
        pool = WorkerPool(splits, min(workers, n_tasks))
        try:
            yield pool.imap
        except BaseException:
            pool.kill()
            raise
        else:
            pool.close()
    else:
        yield lambda fn, tasks: (fn(t, splits) for t in tasks)


def batch_rows(split: Split | None, batch_size: int | None, shape: tuple[int, ...] | None = None,
               out_itemsize: int = 4) -> int:
    """Images per batch: ``batch_size`` if given, else chosen from the image shape.

    Automatic batches are about :data:`BATCH_BYTES` of float32 and a whole
    number of output chunks (of ``out_itemsize`` bytes per value).
    """
    if batch_size:
        return batch_size
    shape = shape or split.shape
    if shape is None:
        return FOLDER_BATCH
    values = max(1, int(np.prod(shape)))
    chunk = max(1, CHUNK_BYTES // (values * out_itemsize))
    return max(1, BATCH_BYTES // (values * 4) // chunk) * chunk


def _task_ranges(split: Split, batch_size: int | None, workers: int) -> list[tuple[int, int]]:
    """(start, stop) of each task: a batch, or a smaller share for a decoding worker."""
    step = batch_rows(split, batch_size)
    if workers > 1 and isinstance(split, FolderSplit):
        step = min(WORKER_CHUNK, step)
    return [(i, min(i + step, len(split))) for i in range(0, len(split), step)]


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
    splits = {name: source.splits[name] for name in names}
    workers = workers or default_workers()
    tasks = [(name, a, b, source.channels, source.dtype, on_error)
             for name in names for a, b in _task_ranges(splits[name], batch_size, workers)]
    results = {name: RunningStats(source.channels, source.dtype) for name in names}
    skipped: dict[str, list] = {name: [] for name in names}
    with ExitStack() as bars, _mapper(splits, workers, len(tasks)) as imap:
        bar, current = None, None
        for (name, a, b, *_), (part, skip) in zip(tasks, imap(_stats_task, tasks)):
            if name != current:  # a bar per split, in turn
                bars.close()
                bar, current = bars.enter_context(progress(len(splits[name]), f"stats {name}", show_progress)), name
            results[name].merge(part)
            skipped[name].extend(skip)
            bar.update(b - a)
    for name in names:
        sk = skipped[name]
        if results[name].images_ == 0 and len(splits[name]):
            raise SourceError(f"{source.path}: no image of split {name} could be read "
                              f"({len(sk)} skipped, first: {sk[0][0]}: {sk[0][1]})")
    skipped = list(source.skipped) + [s for name in names for s in skipped[name]]
    fit = source.fit_split if source.fit_split in results else names[0]
    return stats_document(source=os.path.abspath(source.path), color=source.color, channels=source.channels,
                          max_value=source.max_value, splits=results, fit_split=fit, skipped=skipped)


# ------------------------------------------------------------ writing HDF5


def read_batches(split: Split, *, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 on_error: str = "fail", stats_of: tuple | None = None) -> Iterator[tuple[Batch, RunningStats]]:
    """The split's batches in order, decoded by ``workers`` processes for image folders.

    Yields ``(batch, stats)``: with ``stats_of = (channels, dtype)`` the
    statistics of the batch, computed where and when it was decoded, else None.
    """
    workers = workers or default_workers()
    tasks = [(split.name, a, b, on_error, stats_of) for a, b in _task_ranges(split, batch_size, workers)]
    with _mapper({split.name: split}, workers, len(tasks)) as imap:
        yield from imap(_read_task, tasks)


class PixelCache:
    """Decoded pixels of one split kept between the statistics pass and the
    writing pass, so a JPEG is decoded (or an .npz member inflated) once.

    In memory when the split is small (at most ``IN_MEMORY_CACHE`` bytes),
    else in a raw file beside the output, removed on close.
    """

    def __init__(self, folder: str, image_shape: tuple[int, ...], dtype, n_images: int):
        self.image_shape = tuple(image_shape)
        self.dtype = np.dtype(dtype)
        self._memory: list[np.ndarray] | None = None
        self._file = None
        self.path = None
        if n_images * int(np.prod(self.image_shape)) * self.dtype.itemsize <= IN_MEMORY_CACHE:
            self._memory = []
        else:
            import tempfile

            from .outputs import TMP_SUFFIX
            fd, self.path = tempfile.mkstemp(prefix=".imgnorm-cache.", suffix=TMP_SUFFIX, dir=folder)
            self._file = os.fdopen(fd, "wb")
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.labels: list = []
        self.files: list[str] = []

    def append(self, batch: Batch) -> None:
        x = np.ascontiguousarray(batch.images)
        if self._memory is not None:
            self._memory.append(x)
        else:
            self._file.write(memoryview(x.reshape(-1).view(np.uint8)))
        self.n += len(batch)
        if batch.labels is not None:
            self.labels.append(batch.labels)
        if batch.files is not None:
            self.files.extend(batch.files)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self.n == 0:
            return
        labels = np.concatenate(self.labels) if self.labels else None
        if self._memory is not None:
            a = 0
            while self._memory:
                x = self._memory.pop(0)  # let go of each batch once it is handed out
                yield Batch(x, labels[a:a + len(x)] if labels is not None else None,
                            self.files[a:a + len(x)] if self.files else None, a)
                a += len(x)
            return
        self._file.flush()
        # Plain reads, not a memory map: mapped pages would stay in the
        # process's resident memory and grow with the dataset.
        with open(self.path, "rb") as f:
            for a in range(0, self.n, batch_size):
                b = min(a + batch_size, self.n)
                x = np.empty((b - a,) + self.image_shape, self.dtype)
                f.readinto(memoryview(x.reshape(-1).view(np.uint8)))
                yield Batch(x, labels[a:b] if labels is not None else None,
                            self.files[a:b] if self.files else None, a)

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def image_shape(source: Source, split: Split, on_error: str = "fail") -> tuple[int, int, int]:
    """The (height, width, channels) every image of ``split`` will have, read from headers.

    Raises SourceError naming two files whose sizes differ, before anything is written.
    """
    if split.shape is not None:
        return split.shape
    size = getattr(split, "size", None)
    if size is not None:
        return (size[1], size[0], source.channels)
    from .decode import probe
    first = None
    for f in split.files:
        try:
            info = probe(f)
        except ImageError:
            if on_error == "skip":
                continue
            raise
        if first is None:
            first = (f, info.width, info.height)
        elif (info.width, info.height) != first[1:]:
            raise SourceError(f"images differ in size: {first[0]} is {first[1]}x{first[2]}, {f} is "
                              f"{info.width}x{info.height}; pass --size WxH to resize them all")
    if first is None:
        raise SourceError(f"{source.path}: no readable image in split {split.name}")
    return (first[2], first[1], source.channels)


def _check_options(method, *, per_channel, per_image, minmax, unit, clip_rescale, epsilon, stats, fit_split):
    from .transforms import METHODS
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    for flag, ok, name in ((minmax, method == "normalize", "--minmax"), (unit, method == "center", "--unit"),
                           (clip_rescale, method == "standardize", "--clip-rescale"),
                           (epsilon, method == "standardize", "--epsilon")):
        if flag and not ok:
            raise OptionError(f"{name} does not apply to {method}", option=name)
    if epsilon < 0:
        raise OptionError(f"--epsilon must be >= 0, got {epsilon}", option="--epsilon")
    if per_image and stats is not None:
        raise OptionError("--per-image uses each image's own statistics; it cannot take --stats")
    if per_image and fit_split is not None:
        raise OptionError("--per-image uses each image's own statistics; it cannot take --fit-split")
    if stats is not None and fit_split is not None:
        raise OptionError("--stats applies saved statistics; it cannot take --fit-split")


def _plan(source: Source, method: str, scaling_from: Callable, *, stats, per_image: bool, per_channel: bool,
          minmax: bool, unit: bool, max_value) -> tuple:
    """What gets applied, decided before any pixel is read where possible.

    Returns ``(scaling, applied document, per_channel)``; ``scaling`` is None
    when it has to be fitted on the data first, or for --per-image.
    """
    if per_image:
        if method == "normalize" and not minmax or method == "center" and unit:
            need_max_value(max_value)
        return None, None, per_channel
    if stats == "imagenet":
        fit = imagenet_fit(source.channels, max_value)
        applied = {"format": "imgnorm.stats", "version": 1, "source": "imagenet", "color": "rgb", "channels": 3,
                   "max_value": max_value, "fit_split": "imagenet", "splits": {"imagenet": fit}}
        return scaling_from(fit, True), applied, True
    if isinstance(stats, dict):
        if stats["channels"] != source.channels:
            raise StatsFileError(f"the stats document has {stats['channels']} channel(s), {source.path} has "
                                 f"{source.channels}; compute statistics on data read the same way")
        if stats.get("max_value") != source.max_value:
            raise StatsFileError(f"the stats document is for pixels with max value {stats.get('max_value')}, "
                                 f"{source.path} has {source.max_value}")
        return scaling_from(stats["splits"][stats["fit_split"]], per_channel), stats, per_channel
    if method == "normalize" and not minmax:
        return scaling_from({}, per_channel), None, per_channel
    return None, None, per_channel


def transform_to_hdf5(source: Source, output: str, method: str, *, per_channel: bool = False,
                      per_image: bool = False, minmax: bool = False, unit: bool = False,
                      clip_rescale: bool = False, epsilon: float = 0.0, fit_split: str | None = None,
                      stats: dict | str | None = None, max_value: float | None = None, dtype: str = "float32",
                      layout: str = "nhwc", compression: str = "none", force: bool = False,
                      stats_out: str | None = None, splits: list[str] | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, on_error: str = "fail",
                      show_progress: bool = False) -> dict:
    """Scale every split of ``source`` and write them to the HDF5 file ``output``.

    Parameters
    ----------
    method : {"normalize", "center", "standardize"}
    per_channel : bool
        Per-channel statistics instead of global ones.
    per_image : bool
        Sample-wise: each image is scaled with its own statistics.
    stats : dict or "imagenet", optional
        A stats document to apply instead of fitting on ``fit_split``.
    fit_split : str, optional
        The split whose statistics are applied to every split (default:
        ``train`` when present, else the only split).

    Returns
    -------
    dict
        ``rows`` per split, the ``stats`` document of the written data, the
        ``applied`` document, ``warnings`` and ``skipped`` images.
    """
    from .outputs import atomic_output, check_output, reserve, write_json
    from .report import channel_names
    from .transforms import check_writable_dtype, feature_scaling, per_image_scaled

    _check_options(method, per_channel=per_channel, per_image=per_image, minmax=minmax, unit=unit,
                   clip_rescale=clip_rescale, epsilon=epsilon, stats=stats, fit_split=fit_split)
    out_dtype = check_writable_dtype(dtype)
    check_output(output, force)
    if stats_out:
        check_output(stats_out, force)
    names = [source.split(s).name for s in splits] if splits else list(source.splits)
    fit_name = source.split(fit_split).name if fit_split else source.fit_split
    max_value = max_value or source.max_value
    cnames = channel_names(source.color, source.channels)
    shapes = {name: image_shape(source, source.splits[name], on_error) for name in names}

    def scaling_from(fit_entry, per_ch):
        return feature_scaling(method, fit_entry, channels=source.channels, max_value=max_value,
                               per_channel=per_ch, minmax=minmax, unit=unit, clip_rescale=clip_rescale,
                               epsilon=epsilon, channel_names=cnames)

    scaling, applied, per_channel = _plan(source, method, scaling_from, stats=stats, per_image=per_image,
                                          per_channel=per_channel, minmax=minmax, unit=unit, max_value=max_value)
    needs_fit = scaling is None and not per_image
    if out_dtype == np.float16:
        _check_float16(scaling, method, unit, per_image, max_value, source)

    results: dict[str, RunningStats] = {}
    skipped: list = list(source.skipped)
    rows: dict[str, int] = {}
    warnings: list[str] = []
    folder = os.path.dirname(os.path.abspath(output))
    with atomic_output(output, force) as tmp, ExitStack() as stack:
        # The disk space first: a full disk fails before the fit pass, not after it.
        bound = _output_bound(source, names, shapes, out_dtype)
        reserve(tmp, bound)
        if needs_fit and not any(_forks_workers(s, workers) for s in source.splits.values()):
            # h5py's import (~25 ms, most of it Python) runs beside the fit pass,
            # which spends its time in ISA-L and the C kernel without the GIL.
            # Not where worker processes fork: a fork during an import in
            # another thread can leave the child a module lock nobody releases.
            threading.Thread(target=importlib.import_module, args=(f"{__package__}.store",), daemon=True,
                             name="imgnorm-import").start()
        cache = None
        if needs_fit:
            split = source.splits[fit_name]
            if fit_name not in shapes:
                shapes[fit_name] = image_shape(source, split, on_error)
            if fit_name in names and split.keep_between_passes:
                cache = PixelCache(folder, shapes[fit_name], source.dtype, len(split))
                stack.callback(cache.close)
            rs, fit_skipped = _fit_pass(source, split, shapes[fit_name], cache=cache, batch_size=batch_size,
                                        workers=workers, on_error=on_error, show_progress=show_progress)
            skipped.extend(fit_skipped)
            results[fit_name] = rs
            scaling = scaling_from(rs.to_dict(), per_channel)
            if out_dtype == np.float16:
                _check_float16(scaling, method, unit, per_image, max_value, source)
        from .store import H5Writer  # imports h5py (or waits for the thread above)

        writer = stack.enter_context(H5Writer(tmp, dtype=out_dtype, layout=layout, compression=compression,
                                              reserve_bytes=bound))
        if scaling is not None:
            warnings.extend(f"{w} (statistics of {applied['fit_split'] if applied else fit_name})"
                            for w in scaling.warnings)
        n_flat = 0
        for name in names:
            split = source.splits[name]
            labels_dtype = split.labels.dtype if split.labels is not None else None
            writer.create_split(name, len(split), shapes[name], labels_dtype=labels_dtype,
                                with_files=split.files is not None)
            fresh = name not in results
            rs = RunningStats(source.channels, source.dtype) if fresh else results[name]
            per_batch = batch_rows(split, batch_size, shapes[name], out_dtype.itemsize)
            if cache is not None and name == fit_name:
                batches = ((b, None) for b in cache.batches(per_batch))
            else:
                batches = read_batches(split, batch_size=per_batch,
                                       workers=workers, on_error=on_error,
                                       stats_of=(source.channels, source.dtype) if fresh else None)

            def scale(batch_stats, shape=shapes[name]):
                batch, part = batch_stats
                x = _as_array(batch, shape)
                if per_image:
                    return batch, part, *per_image_scaled(x, method, max_value=max_value, per_channel=per_channel,
                                                       minmax=minmax, unit=unit, clip_rescale=clip_rescale,
                                                       epsilon=epsilon, dtype=out_dtype)
                return batch, part, scaling.apply(x, out_dtype), 0

            with progress(len(split), f"write {name}", show_progress) as bar:
                # Reading and scaling run one batch ahead in a thread (zlib,
                # libjpeg and numpy release the GIL) while this one writes.
                for batch, part, y, flat in ahead(batches, scale):
                    if fresh:
                        rs.merge(part)
                        skipped.extend(batch.skipped)
                    n_flat += flat
                    writer.write(name, y, batch.labels, batch.files)
                    bar.update(len(batch) + len(batch.skipped))
            rows[name] = writer.finish_split(name)
            results[name] = rs
        if sum(rows.values()) == 0:
            raise SourceError(f"{source.path}: no image could be read; nothing was written")
        if n_flat:
            warnings.append(f"{n_flat} image(s) had a zero {'std' if method == 'standardize' else 'spread'} "
                            "in some channel; those channels got scale 1 (a blank image becomes zeros)")
        # every split read, in the source's order: the written ones and the fit split
        doc = stats_document(source=os.path.abspath(source.path), color=source.color,
                             channels=source.channels, max_value=max_value,
                             splits={n: results[n] for n in source.splits if n in results},
                             fit_split=fit_name if fit_name in results else names[0], skipped=skipped)
        options = {"per_channel": per_channel, "per_image": per_image, "minmax": minmax, "unit": unit,
                   "clip_rescale": clip_rescale, "epsilon": epsilon, "fit_split": None if per_image else fit_name,
                   "stats": "imagenet" if stats == "imagenet" else ("file" if stats else None),
                   "max_value": max_value, "dtype": out_dtype.name, "layout": layout, "compression": compression,
                   "color": source.color, "size": list(source.splits[names[0]].size)
                   if getattr(source.splits[names[0]], "size", None) else None}
        if scaling is not None and not per_image:
            options["offset"] = scaling.offset.tolist()
            options["scale"] = scaling.scale.tolist()
        from . import __version__
        writer.set_attrs(stats=json.dumps(applied or doc), class_names=source.class_names, method=method,
                         options=options, source=os.path.abspath(source.path), imgnorm_version=__version__,
                         skipped=[{"file": f, "reason": r} for f, r in skipped] if skipped else None)
    if stats_out:
        write_json(stats_out, doc, force)
    return {"output": output, "rows": rows, "stats": doc, "applied": applied or doc, "warnings": warnings,
            "skipped": skipped}


def _fit_pass(source: Source, split: Split, shape: tuple[int, ...], *, cache: PixelCache | None,
              batch_size: int | None, workers: int | None, on_error: str,
              show_progress: bool) -> tuple[RunningStats, list]:
    """Statistics of the fit split in one streaming pass, its pixels kept in ``cache`` if given.

    Returns the split's :class:`RunningStats` and the images skipped.
    """
    rs = RunningStats(source.channels, source.dtype)
    skipped: list = []
    in_process = not _forks_workers(split, workers)
    with progress(len(split), f"stats {split.name}", show_progress) as bar:
        # Worker processes compute each image's statistics as they decode it;
        # read here, a batch's statistics are computed while the next is read.
        batches = read_batches(split, batch_size=batch_rows(split, batch_size, shape), workers=workers,
                               on_error=on_error, stats_of=None if in_process else (source.channels, source.dtype))
        for batch, x, part in ahead(batches, lambda bs: (bs[0], _as_array(bs[0], shape), bs[1])):
            if part is None:
                rs.update(x)
            else:
                rs.merge(part)
            skipped.extend(batch.skipped)
            if cache is not None:
                cache.append(Batch(x, batch.labels, batch.files, batch.start))
            bar.update(len(batch) + len(batch.skipped))
    if rs.images_ == 0:
        raise SourceError(f"{source.path}: no image of split {split.name} could be read")
    return rs, skipped


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


def _output_bound(source: Source, names: list[str], shapes: dict, out_dtype: np.dtype) -> int:
    """An upper bound of the HDF5 file's size: uncompressed data, labels, file
    names, plus room for HDF5's indexes and the attributes."""
    total = 4 << 20
    for name in names:
        split = source.splits[name]
        total += len(split) * int(np.prod(shapes[name])) * out_dtype.itemsize
        total += len(split) * 8 if split.labels is not None else 0
        total += sum(len(f.encode()) + 64 for f in split.files) if split.files is not None else 0
    return total + total // 50


def _as_array(batch: Batch, shape: tuple[int, ...]) -> np.ndarray:
    """The batch as one (n, height, width, channels) array of the expected shape."""
    imgs = batch.images
    if isinstance(imgs, np.ndarray) and imgs.shape[1:] == tuple(shape):
        return imgs
    for i, a in enumerate(imgs):
        if a.shape != tuple(shape):
            where = batch.files[i] if batch.files else f"image {batch.start + i}"
            raise SourceError(f"{where} has shape {a.shape[1]}x{a.shape[0]}x{a.shape[2]}, expected "
                              f"{shape[1]}x{shape[0]}x{shape[2]}; pass --size WxH to resize all images")
    return np.stack(imgs) if len(imgs) else np.empty((0,) + tuple(shape), np.uint8)


def _check_float16(scaling, method, unit, per_image, max_value, source):
    top = float(max_value or 0) if source.dtype.kind in "ui" else None
    if top is None:
        return
    if scaling is not None:
        bound = scaling.bound(0.0, top)
    elif per_image and method == "center" and not unit:
        bound = top
    else:
        return
    if bound > float(np.finfo(np.float16).max):
        raise OptionError(f"values up to {bound:g} overflow float16; use --dtype float32", option="--dtype")
