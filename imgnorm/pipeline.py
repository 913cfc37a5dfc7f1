"""source -> statistics -> transform -> store, in stages: plan, fit, write.

A pass over a source is a list of tasks, each over a :class:`Shard` (a range of
rows of one split), run by an executor (:class:`imgnorm.workers.LocalExecutor`:
this process or forked workers) whose results merge exactly. The task
functions (:func:`stats_task`, :func:`read_task`) are plain module-level
functions of ``(source, shard)``, so any executor can run them.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np

from .errors import ImageError, OptionError, SourceError, StatsFileError, printable
from .outputs import PART, OutputSet, human_bytes, is_zarr, write_error
from .sources import Batch, Source, Split
from .stats import RunningStats, document_bytes, stats_document
from .formats import check_layout_and_compression
from .transforms import Scaler, check_writable_dtype, need_max_value
from .workers import LocalExecutor, ahead, progress

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
# Images per task sent to a decoding worker: small enough to balance two
# cores over a few hundred files, large enough that task overhead is noise.
WORKER_CHUNK = 16


class Shard(NamedTuple):
    """Rows ``start:stop`` of split ``split``: what one task reads."""

    split: str
    start: int
    stop: int


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


def shards(source: Source, names: list[str], rows: int | dict[str, int], *, parallel: bool,
           chunk: int = WORKER_CHUNK, pixels: bool = True) -> list[Shard]:
    """The shards of splits ``names``: ``rows`` images each (per split if a dict),
    or ``chunk`` (the executor's share) for decoding workers: at most ``rows``
    when a task holds its pixels (``pixels``), else exactly ``chunk`` (a task
    that only counts decodes one image at a time, whatever its length)."""
    out = []
    for name in names:
        split = source.splits[name]
        step = rows[name] if isinstance(rows, dict) else rows
        if parallel and source.decodes:
            step = min(chunk, step) if pixels else chunk
        out += [Shard(name, a, min(a + step, len(split))) for a in range(0, len(split), step)]
    return out


# ------------------------------------------------------------ tasks


class Tally:
    """What a task counts as it reads: the statistics of its images, and with
    ``per_class`` those of each class label (the total is then their merge).

    Called as the ``visit`` of :meth:`Split.read`: ``tally(images, rows)``.
    """

    def __init__(self, source: Source, split: Split, per_class: bool = False):
        self.source = source
        self.total = RunningStats(source.channels, source.dtype)
        self.labels = split.labels if per_class else None
        self.by_label: dict[int, RunningStats] = {}

    def __call__(self, images, rows) -> None:
        if self.labels is None:
            self.total.update(images)
            return
        labels = self.labels[np.asarray(rows, dtype=np.int64)]
        for label in np.unique(labels):
            picked = images[labels == label] if isinstance(images, np.ndarray) else \
                [a for a, k in zip(images, labels) if k == label]
            rs = self.by_label.setdefault(int(label), RunningStats(self.source.channels, self.source.dtype))
            rs.update(picked)

    def result(self) -> tuple[RunningStats, dict[int, RunningStats] | None]:
        if self.labels is None:
            return self.total, None
        for label in sorted(self.by_label):  # a fixed order: float merges are order-sensitive
            self.total.merge(self.by_label[label])
        return self.total, self.by_label


def stats_task(source: Source, shard: Shard, on_error: str = "fail", per_class: bool = False):
    """Statistics of a shard (and of each class in it, with ``per_class``); the
    pixels themselves stay where they were decoded.

    Returns ``(stats, skipped, stats by class label or None)``.
    """
    split = source.splits[shard.split]
    tally = Tally(source, split, per_class)
    batch = split.read(shard.start, shard.stop, on_error, visit=tally, keep=False)
    total, by_label = tally.result()
    return total, batch.skipped, by_label


def read_task(source: Source, shard: Shard, on_error: str = "fail",
              with_stats: bool = False) -> tuple[Batch, RunningStats | None]:
    """The images of a shard, and their statistics when asked (computed as each is decoded)."""
    rs = RunningStats(source.channels, source.dtype) if with_stats else None
    batch = source.splits[shard.split].read(shard.start, shard.stop, on_error,
                                            visit=(lambda images, rows: rs.update(images)) if rs is not None else None)
    return batch, rs


def _chunk(ex) -> int:
    """Images per decoding task on executor ``ex`` (larger on Dask, whose tasks cost more to send)."""
    return getattr(ex, "chunk", WORKER_CHUNK)


def _executor(source: Source, names: list[str], workers: int | None, batch_size: int | None) -> LocalExecutor:
    items = sum(len(source.splits[n]) for n in names)
    tasks = len(shards(source, names, batch_rows(None, batch_size, (1, 1, 1)), parallel=True))
    return LocalExecutor(source, workers, items=items, tasks=tasks)


# ------------------------------------------------------------ statistics


def compute_stats(source: Source, *, split: str | None = None, batch_size: int | None = DEFAULT_BATCH_SIZE,
                  workers: int | None = None, on_error: str = "fail", show_progress: bool = False,
                  output: str | None = None, force: bool = False, dry_run: bool = False, percentiles=None,
                  per_class: bool = False, executor=None) -> dict:
    """Statistics of every split of ``source`` (or of one), as a stats document.

    Parameters
    ----------
    source : Source
        From :func:`imgnorm.open_source`.
    split : str, optional
        Only this split.
    batch_size : int, optional
        Images held in memory at once (per worker).
    workers : int, optional
        Decoding processes for image folders; default: all cores. The result
        does not depend on it.
    output : str, optional
        Also write the document there (JSON; ``-`` for standard output),
        checked before any image is read and replaced only with ``force``.
    dry_run : bool
        Check ``output`` and count the images, read none: returns the splits
        and their image counts.
    percentiles : sequence of float, optional
        The q (0..100) of the exact percentile blocks; default
        :data:`imgnorm.stats.PERCENTILES`.
    per_class : bool
        Also the statistics of each class label within each split.

    Returns
    -------
    dict
        The stats document (format ``imgnorm.stats``, version 2): per split,
        the image and pixel counts, global and per-channel count, mean, var,
        std, min, max, exact percentiles, median, IQR and MAD (integer
        pixels), the histogram, and the provenance of the numbers.
    """
    names = [source.split(split).name] if split else list(source.splits)
    with OutputSet(force, inputs={"SOURCE": source.path}, dry_run=dry_run) as outputs:
        out = outputs.add(output, "-o", what="the stats document") if output is not None else None
        if dry_run:
            return {"dry_run": True, "output": output, "splits": {n: {"images": len(source.splits[n])}
                                                                   for n in names}}
        with executor or _executor(source, names, workers, batch_size) as ex:
            rows = {n: batch_rows(source.splits[n], batch_size) for n in names}
            tasks = shards(source, names, rows, parallel=ex.parallel, chunk=_chunk(ex), pixels=False)
            results, classes, skipped = _stats_pass(source, tasks, ex, on_error, per_class, show_progress)
        for name in names:
            if results[name].images_ == 0 and len(source.splits[name]):
                sk = skipped[name]
                raise SourceError(f"{printable(source.path)}: no image of split {name} could be read "
                                  f"({len(sk)} skipped, first: {printable(sk[0][0])}: {printable(sk[0][1])})")
        fit = source.fit_split if source.fit_split in results else names[0]
        doc = document(source, results, fit, [s for n in names for s in skipped[n]], percentiles=percentiles,
                       classes=classes)
        if out is not None:
            outputs.set_content(out, document_bytes(doc))
            outputs.commit()
    return doc


def document(source: Source, results: dict[str, RunningStats], fit_split: str, skipped: list, *,
             max_value=None, percentiles=None, classes: dict | None = None) -> dict:
    """The stats document of what was read of ``source``, with its provenance."""
    from . import __version__

    return stats_document(source=source.name, color=source.color, channels=source.channels,
                          max_value=max_value if max_value is not None else source.max_value, splits=results,
                          fit_split=fit_split, skipped=_stored(source, list(source.skipped) + list(skipped)),
                          percentiles=percentiles, classes=classes, class_names=source.class_names,
                          extra={"provenance": {"imgnorm_version": __version__, "read": source.reading(),
                                                "files": source.digests()}})


def _stats_pass(source: Source, tasks: list[Shard], ex, on_error: str, per_class: bool, show_progress):
    names = list(dict.fromkeys(t.split for t in tasks)) or list(source.splits)
    results = {name: RunningStats(source.channels, source.dtype) for name in names}
    classes: dict[str, dict[int, RunningStats]] = {name: {} for name in names}
    skipped: dict[str, list] = {name: [] for name in names}
    with ExitStack() as bars:
        bar, current = None, None
        for task, (part, skip, by_label) in zip(tasks, ex.map(
                partial(stats_task, on_error=on_error, per_class=per_class), tasks)):
            if task.split != current:  # a bar per split, in turn
                bars.close()
                current = task.split
                bar = bars.enter_context(progress(len(source.splits[current]), f"stats {current}", show_progress))
            results[task.split].merge(part)
            for label, rs in (by_label or {}).items():
                classes[task.split].setdefault(label, RunningStats(source.channels, source.dtype)).merge(rs)
            skipped[task.split].extend(skip)
            bar.update(task.stop - task.start)
    return results, (classes if per_class else None), skipped


def _stored(source: Source, skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Skipped entries as documents record them: names relative to the source, like ``/files``."""
    return [(source.stored_name(f), r) for f, r in skipped]


# ------------------------------------------------------------ plan


@dataclass
class WritePlan:
    """What a write will do, decided before any pixel is read."""

    source: Source
    names: list[str]  # the splits written, in order
    fit_split: str | None  # the split whose statistics apply (None: per image)
    fit: bool  # whether the statistics must be fitted first
    shapes: dict[str, tuple[int, int, int]]  # (height, width, channels) of every split read
    dtype: np.dtype
    layout: str = "nhwc"
    compression: str = "none"
    batch_size: int | None = None
    on_error: str = "fail"
    max_value: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def read(self) -> list[str]:
        """The splits read: those written, and the fit split."""
        return list(dict.fromkeys(self.names + ([self.fit_split] if self.fit else [])))

    def rows(self, name: str) -> int:
        """Images per batch when writing split ``name``: whole output chunks."""
        return batch_rows(self.source.splits[name], self.batch_size, self.shapes[name], self.dtype.itemsize)

    @property
    def bound(self) -> int:
        """An upper bound of the HDF5 file's size: uncompressed data, labels,
        file names, plus room for HDF5's indexes and the attributes."""
        total = 4 << 20
        for name in self.names:
            split = self.source.splits[name]
            total += len(split) * int(np.prod(self.shapes[name])) * self.dtype.itemsize
            total += len(split) * 8 if split.labels is not None else 0
            total += sum(len(f.encode("utf-8", "surrogateescape")) + 64 for f in split.files) \
                if split.files is not None else 0
        return total + total // 50

    @property
    def meta_bound(self) -> int:
        """An upper bound of the HDF5 file's size when its images are in part files."""
        total = 4 << 20
        for name in self.names:
            split = self.source.splits[name]
            total += len(split) * 8 if split.labels is not None else 0
            total += sum(len(f.encode("utf-8", "surrogateescape")) + 64 for f in split.files) \
                if split.files is not None else 0
            total += len(split) * 4  # a virtual mapping per part: far less than this
        return total + total // 50

    def summary(self) -> dict:
        """What the run would write, for ``--dry-run``: splits, counts, shapes, sizes."""
        def stored(name):
            h, w, c = self.shapes[name]
            return [len(self.source.splits[name])] + ([h, w, c] if self.layout == "nhwc" else [c, h, w])

        return {"splits": {n: {"images": len(self.source.splits[n]), "shape": stored(n)} for n in self.names},
                "fit_split": self.fit_split, "fits": self.fit, "dtype": self.dtype.name, "layout": self.layout,
                "compression": self.compression, "max_bytes": self.bound, "pixel_cache_bytes": self.cache_bytes}

    @property
    def cache_bytes(self) -> int:
        """Decoded pixels of the fit split kept between its two passes (0: read it again)."""
        if not self.fit or self.fit_split not in self.names:
            return 0
        split = self.source.splits[self.fit_split]
        if not split.keep_between_passes:
            return 0
        return len(split) * int(np.prod(self.shapes[self.fit_split])) * self.source.dtype.itemsize


def plan_write(source: Source, scaler: Scaler, *, splits: list[str] | None = None, fit_split: str | None = None,
               dtype: str = "float32", layout: str = "nhwc", compression: str = "none",
               batch_size: int | None = None, on_error: str = "fail", force_stats: bool = False) -> WritePlan:
    """Check the options against the source and decide names, shapes and the fit split.

    Reads image headers (to know the output's shapes and size), never pixels.
    """
    out_dtype = check_writable_dtype(dtype)
    check_layout_and_compression(layout, compression)
    names = [source.split(s).name for s in splits] if splits else list(source.splits)
    fit_name = source.split(fit_split).name if fit_split else source.fit_split
    loaded = scaler._doc is not None or scaler._constants is not None
    if scaler.per_image and fit_split is not None:
        raise OptionError("--per-image uses each image's own statistics; it cannot take --fit-split")
    if loaded and fit_split is not None:
        raise OptionError("--stats applies saved statistics; it cannot take --fit-split")
    max_value = scaler.max_value or source.max_value
    _check_scaler_fits(source, scaler, max_value, force_stats)
    if (scaler.robust or scaler.clip_percentiles) and not scaler.per_image and source.dtype.kind == "f":
        raise OptionError(f"{'--robust' if scaler.robust else '--clip-percentiles'} needs exact percentiles, which "
                          f"come from 8- or 16-bit pixels; {printable(source.path)} holds {source.dtype} "
                          "(use --per-image for each image's own)", option="--robust" if scaler.robust
                          else "--clip-percentiles")
    if scaler.per_image and (scaler.method == "normalize" and not scaler.minmax
                             or scaler.method == "center" and scaler.unit):
        need_max_value(max_value)
    if not scaler.per_image and not scaler.needs_fit:
        scaler.scaling(source.dtype, source.channels)  # float pixels without --max-value fail here
    if out_dtype == np.float16:
        scaler.check_float16(source.dtype)
    fit = scaler.needs_fit
    read = names + ([fit_name] if fit and fit_name not in names else [])
    shapes = {name: image_shape(source, source.splits[name], on_error) for name in read}
    return WritePlan(source, names, None if scaler.per_image else fit_name, fit, shapes, out_dtype, layout,
                     compression, batch_size, on_error, max_value)


def _check_scaler_fits(source: Source, scaler: Scaler, max_value, force_stats: bool = False) -> None:
    """A loaded stats document must describe pixels read like these."""
    if scaler._constants is not None:
        scaler._constants_fit(source.channels, max_value)  # one value per channel
        if scaler._channel_order != source.channel_order:
            raise OptionError(f"the constants are for {scaler._channel_order.upper()} pixels, {printable(source.path)}"
                              f" is read as {source.channel_order.upper()}; make the Scaler with "
                              f"channel_order={source.channel_order!r}", option="--channel-order")
        return
    doc = scaler._doc
    if doc is None:
        return
    if doc["channels"] != source.channels:
        raise StatsFileError(f"the stats document has {doc['channels']} channel(s), {printable(source.path)} has "
                             f"{source.channels}; compute statistics on data read the same way")
    want = scaler.max_value or source.max_value
    if want is not None and doc.get("max_value") != want:
        raise StatsFileError(f"the stats document is for pixels with max value {doc.get('max_value')}, "
                             f"{printable(source.path)} has {want}")
    read = (doc.get("provenance") or {}).get("read") if isinstance(doc.get("provenance"), dict) else None
    if isinstance(read, dict) and not force_stats:
        here = source.reading()
        for key in ("color", "channel_order", "size", "resize_mode", "interpolation", "pad_value", "draft"):
            if key in read and read[key] != here[key]:
                raise StatsFileError(f"the stats document is for pixels read with {key} {_shown(read[key])}, "
                                     f"{printable(source.path)} is read with {key} {_shown(here[key])}; read "
                                     "them alike, or pass --force-stats to apply it anyway")


def _shown(v) -> str:
    if isinstance(v, list) and len(v) == 2:
        return f"{v[0]}x{v[1]}"
    return "none" if v is None else str(v)


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
            raise SourceError(f"images differ in size: {printable(first[0])} is {first[1]}x{first[2]}, "
                              f"{printable(f)} is {info.width}x{info.height}; pass --size WxH to resize them all")
    if first is None:
        raise SourceError(f"{printable(source.path)}: no readable image in split {split.name}")
    return (first[2], first[1], source.channels)


# ------------------------------------------------------------ write


def transform_to_hdf5(source: Source, output: str, scaler: Scaler | str = "standardize", *,
                      splits: list[str] | None = None, fit_split: str | None = None, dtype: str = "float32",
                      layout: str = "nhwc", compression: str = "none", force: bool = False,
                      stats_out: str | None = None, batch_size: int | None = DEFAULT_BATCH_SIZE,
                      workers: int | None = None, on_error: str = "fail", show_progress: bool = False,
                      force_stats: bool = False, inputs: dict[str, str] | None = None, dry_run: bool = False,
                      executor=None) -> dict:
    """Scale every split of ``source`` with ``scaler`` and write them to the HDF5 file ``output``.

    Parameters
    ----------
    scaler : Scaler or str
        What to apply; a method name means ``Scaler(method)``. Unless it is
        already fitted (loaded statistics, a preset) it is fitted on
        ``fit_split`` first, feature-wise, and applied to every split.
    fit_split : str, optional
        Default: ``train`` when present, else the first split.
    splits : list of str, optional
        Write only these splits.
    stats_out : str, optional
        Also write the stats document of the data read.
    force_stats : bool
        Apply a loaded stats document even if it was made from pixels read
        otherwise (another size, colour, resize mode...).
    inputs : dict, optional
        Other files the run reads (``{"--stats": path}``): an output naming one is refused.
    dry_run : bool
        Check the outputs and plan the run (image headers only), write nothing:
        returns :meth:`WritePlan.summary`.

    Returns
    -------
    dict
        ``output``; ``rows`` per split; ``stats``, the document of the data
        read; ``applied``, the document applied; ``warnings``; ``skipped`` images.
    """
    scaler = scaler if isinstance(scaler, Scaler) else Scaler(scaler)
    zarr_out = is_zarr(output)
    with OutputSet(force, inputs={"SOURCE": source.path, **(inputs or {})}, dry_run=dry_run) as outputs:
        out, parts = _add_output(outputs, output, zarr_out, compression,
                                 parts=not dry_run and _in_place(executor, on_error))
        doc_out = outputs.add(stats_out, "--stats-out", what="the stats document") if stats_out is not None else None
        plan = plan_write(source, scaler, splits=splits, fit_split=fit_split, dtype=dtype, layout=layout,
                          compression=compression, batch_size=batch_size, on_error=on_error,
                          force_stats=force_stats)
        if dry_run:
            return {"output": output, "stats_out": stats_out, "dry_run": True, **plan.summary()}
        with executor or _executor(source, plan.read, workers, batch_size) as ex:
            try:
                result = _run_write(plan, scaler, ex, outputs, out, show_progress, parts)
            except OSError as e:  # the output or its pixel cache: a full disk, a quota, a lost mount
                raise write_error(out, e) from None
        if doc_out is not None:
            outputs.set_content(doc_out, document_bytes(result["stats"]))
        outputs.commit()
    if parts is None and not zarr_out:
        result["warnings"] += _left_parts(out.target)
    return _described(result, plan, out.target, output=output, stats_out=stats_out)


def _described(result: dict, plan: WritePlan, target: str, **names) -> dict:
    """The result with the output's names, size and the shapes written (fewer
    rows than planned where images were skipped)."""
    result.update(names, bytes=_size_of(target), shapes={n: s["shape"] for n, s in plan.summary()["splits"].items()})
    for name, rows in result["rows"].items():
        result["shapes"][name][0] = rows
    return result


def _add_output(outputs: OutputSet, output: str, zarr_out: bool, compression: str, parts: bool):
    """The output (a file, or a Zarr store's folder) and, where the workers write
    an HDF5 file's images (``parts``), the folder of part files beside it
    (OUT.h5.parts/, joined in OUT.h5 as virtual datasets): ``(out, parts or None)``."""
    if zarr_out:  # usage errors, found before anything is made
        from .zarr_store import check_zarr_output

        check_zarr_output(compression)
    out = outputs.add(output, "-o", seekable=True, directory="zarr" if zarr_out else None,
                      what="the Zarr store" if zarr_out else "HDF5 output")
    if not parts or zarr_out:
        return out, None
    return out, outputs.add(out.target + ".parts", "-o", directory="parts", what="the part files")


def _run_write(plan: WritePlan, scaler: Scaler, ex, outputs: OutputSet, out, show_progress: bool,
               parts=None) -> dict:
    """Fit (if needed), then write every split into ``out.tmp``; the steps of :func:`transform_to_hdf5`.

    ``parts``: the output of the HDF5 part files the workers write (on a cluster)."""
    from .report import channel_names

    scaler.channel_names = channel_names(plan.source.color, plan.source.channels)
    with ExitStack() as stack:
        cache = stack.enter_context(PixelCache.for_plan(plan, outputs, out))
        # The disk space first: a full disk fails before the fit pass, not after it.
        space = {parts.tmp: plan.bound, out.tmp: plan.meta_bound} if parts else {out.tmp: plan.bound}
        outputs.reserve({**space, **({cache.path: plan.cache_bytes} if cache.path else {})})
        # h5py's import (~25 ms, most of it Python) runs beside the fit pass, which
        # spends its time in ISA-L and the C kernel; the workers have forked already.
        threading.Thread(target=_preload, args=("zarr" if out.directory else f"{__package__}.store",), daemon=True,
                         name="imgnorm-import").start()
        state = _WriteState([])
        if plan.fit:
            state.results[plan.fit_split] = fit_pass(plan, scaler, ex, cache, state.skipped, show_progress)
            if plan.dtype == np.float16:
                scaler.check_float16(plan.source.dtype)
        with open_writer(plan, out.tmp, out.directory,
                         parts=(parts.tmp, os.path.basename(parts.target)) if parts else None) as writer:
            for name in plan.names:
                _write_split(plan, scaler, ex, writer, name, cache, state, show_progress)
            if sum(state.rows.values()) == 0:
                raise SourceError(f"{printable(plan.source.path)}: no image could be read; nothing was written")
            if parts is not None:
                _drop_unfinished_parts(parts.tmp)
            return _finish(plan, scaler, writer, state)


def _drop_unfinished_parts(folder: str) -> None:
    """Remove the temporaries of part files whose task died (it ran again and wrote its part)."""
    for name in os.listdir(folder):
        if not PART.match(name):
            os.unlink(os.path.join(folder, name))


def _left_parts(target: str) -> list[str]:
    """A warning when part files of an earlier cluster run sit beside an HDF5 file
    now written whole: nothing uses them any more (unless a copy of the old
    file does), so they are named, not removed."""
    from .outputs import FOLDERS

    folder = target + ".parts"
    if not os.path.isdir(folder) or not FOLDERS["parts"][1](folder):
        return []
    return [f"{printable(folder)} ({human_bytes(_size_of(folder))}) holds part files of an earlier cluster run; "
            f"{printable(os.path.basename(target))} no longer uses them: remove the folder to free the space"]


def _size_of(path: str) -> int:
    """Bytes of a file, or of every file in a directory (a Zarr store)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def open_writer(plan: WritePlan, path: str, directory: str | None, parts: tuple[str, str] | None = None):
    """The writer of the output's format: :class:`imgnorm.zarr_store.ZarrWriter`
    for a directory (a Zarr store), else :class:`imgnorm.store.H5Writer`
    (with ``parts``: images in part files joined by virtual datasets)."""
    if directory:
        from .zarr_store import ZarrWriter

        return ZarrWriter(path, dtype=plan.dtype, layout=plan.layout, compression=plan.compression)
    from .store import H5Writer  # imports h5py (or waits for the import thread)

    return H5Writer(path, dtype=plan.dtype, layout=plan.layout, compression=plan.compression,
                    reserve_bytes=plan.meta_bound if parts else plan.bound, parts=parts)


def _preload(module: str) -> None:
    """Import the writer's library (h5py ~25 ms, zarr ~200 ms) in a thread beside the fit pass."""
    try:
        importlib.import_module(module)
    except ImportError:  # reported where the writer is made
        pass


@dataclass
class _WriteState:
    skipped: list
    results: dict[str, RunningStats] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    n_flat: int = 0


def fit_pass(plan: WritePlan, scaler: Scaler, ex, cache: "PixelCache", skipped: list,
             show_progress: bool = False) -> RunningStats:
    """Statistics of the fit split in one streaming pass; the scaler is fitted on them.

    Where the split is written too and decoding is dear, the tasks also write
    its decoded pixels into ``cache`` (each image at its row, straight from
    the process that decoded it), so that nothing is decoded twice and no
    pixel travels through a pipe.
    """
    source, name = plan.source, plan.fit_split
    split, shape = source.splits[name], plan.shapes[name]
    rs = RunningStats(source.channels, source.dtype)
    # cache_task and stats_task hold one image at a time; read_task holds its shard
    holds = not (cache.holds(name) or ex.parallel or source.decodes)
    tasks = shards(source, [name], batch_rows(split, plan.batch_size, shape), parallel=ex.parallel,
                   chunk=_chunk(ex), pixels=holds)
    if cache.holds(name):
        parts = ex.map(partial(cache_task, path=cache.path, shape=shape, on_error=plan.on_error), tasks)
    elif ex.parallel or source.decodes:
        parts = ex.map(partial(stats_task, on_error=plan.on_error), tasks)  # (stats, skipped, None)
    else:  # arrays, read here: a batch's statistics are computed while the next one is read
        parts = _stats_here(source, ex.map(partial(read_task, on_error=plan.on_error), tasks), shape)
    with progress(len(split), f"stats {name}", show_progress) as bar:
        for task, result in zip(tasks, parts):
            part, skip = result[0], result[1]
            rs.merge(part)
            skipped.extend(skip)
            if cache.holds(name):
                cache.record(result[2])
            bar.update(task.stop - task.start)
    if rs.images_ == 0:
        raise SourceError(f"{printable(source.path)}: no image of split {name} could be read")
    scaler.fit_stats(rs)
    return rs


def _stats_here(source: Source, batches, shape: tuple):
    """``(stats, skipped)`` of each batch, computed in this thread while a
    background thread reads (inflates) the next one."""
    for batch, x in ahead(batches, lambda bs: (bs[0], _as_array(bs[0], shape))):
        yield RunningStats(source.channels, source.dtype).update(x), batch.skipped


def cache_task(source: Source, shard: Shard, path: str, shape: tuple, on_error: str = "fail"):
    """Statistics of a shard, each decoded image written to its row of the raw file ``path``
    as it is decoded (a task holds one image, whatever its length).

    Returns ``(stats, skipped, rows kept)``.
    """
    rs = RunningStats(source.channels, source.dtype)
    split = source.splits[shard.split]
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def visit(images, rows):
        for a, i in zip(images, rows):
            _check_shape(a, shape, split.files[i] if getattr(split, "files", None) is not None else f"image {i}")
        rs.update(images)
        for a, i in zip(images, rows):
            data = memoryview(np.ascontiguousarray(a)).cast("B")
            if os.pwrite(fd, data, int(i) * len(data)) != len(data):
                raise OSError(28, "No space left on device")

    try:
        batch = split.read(shard.start, shard.stop, on_error, visit=visit, keep=False)
    finally:
        os.close(fd)
    return rs, batch.skipped, batch.rows


def write_task(source: Source, shard: Shard, *, scaler: Scaler, sink, shape: tuple, dtype: str,
               layout: str, with_stats: bool = False, cache: str | None = None):
    """Read, scale and write the rows of a shard from the process that read them:
    ``sink(split, start, values)`` writes them (whole chunks of a Zarr store,
    or an HDF5 part file), so tasks never share a chunk and need no lock.

    ``cache``: the raw pixel cache holding the split's decoded rows (the fit
    split), read instead of decoding again.
    Returns ``(stats or None, images with a zero spread)``.
    """
    if cache is not None:
        x = read_cache_rows(cache, shape, source.dtype, shard.start, shard.stop)
        rs = None
    else:
        batch, rs = read_task(source, shard, "fail", with_stats)
        x = _as_array(batch, shape)
    y, flat = scaler.transform_batch(x, dtype)
    if layout == "nchw" and y.ndim == 4:
        y = y.transpose(0, 3, 1, 2)
    sink(shard.split, shard.start, y)
    return rs, flat


def read_cache_rows(path: str, shape: tuple, dtype, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a raw pixel cache (every row present: nothing was skipped)."""
    x = np.empty((stop - start,) + tuple(shape), dtype)
    view = memoryview(x.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as f:
        if os.preadv(f.fileno(), [view], start * int(np.prod(shape)) * x.dtype.itemsize) != len(view):
            raise SourceError(f"{printable(path)}: the pixel cache was cut short; run again")
    return x


def _write_split_in_place(plan: WritePlan, scaler: Scaler, ex, writer, name: str, cache: "PixelCache",
                          state: _WriteState, show_progress: bool) -> None:
    """Write one split on the executor's workers: each task writes whole chunks of
    ``x`` itself (into a Zarr store, or as an HDF5 part file); labels and file
    names are written here."""
    source, split, shape = plan.source, plan.source.splits[name], plan.shapes[name]
    fresh = name not in state.results
    rs = RunningStats(source.channels, source.dtype) if fresh else state.results[name]
    chunk = writer.chunk_rows(name)
    step = max(1, round(_chunk(ex) / chunk)) * chunk
    tasks = [Shard(name, a, min(a + step, len(split))) for a in range(0, len(split), step)]
    fn = partial(write_task, scaler=scaler, sink=writer.part_sink(name), shape=shape, dtype=plan.dtype.name,
                 layout=plan.layout, with_stats=fresh, cache=cache.path if cache.holds(name) else None)
    with progress(len(split), f"write {name}", show_progress) as bar:
        for task, (part, flat) in zip(tasks, ex.map(fn, tasks)):
            if fresh:
                rs.merge(part)
            state.n_flat += flat
            bar.update(task.stop - task.start)
    stored = source.stored_name
    state.rows[name] = writer.finish_in_place(name, len(split), split.labels,
                                              [stored(f) for f in split.files] if split.files is not None else None,
                                              [(t.start, t.stop) for t in tasks])
    state.results[name] = rs


def _in_place(ex, on_error: str) -> bool:
    """Whether the executor's workers write the output themselves: on a cluster,
    unless ``--on-error skip`` (the rows an image lands in are not known before
    it is read, so the pixels come back and this process writes them)."""
    return getattr(ex, "writes_in_place", False) and on_error == "fail"


def _write_split(plan: WritePlan, scaler: Scaler, ex, writer, name: str, cache: "PixelCache",
                 state: _WriteState, show_progress: bool) -> None:
    """Scale and write one split, computing its statistics on the way if it was not fitted on."""
    source, split, shape = plan.source, plan.source.splits[name], plan.shapes[name]
    stored = source.stored_name
    writer.create_split(name, len(split), scaler.output_shape(shape),
                        labels_dtype=split.labels.dtype if split.labels is not None else None,
                        files=[stored(f) for f in split.files] if split.files is not None else None)
    if getattr(writer, "parts", True) and _in_place(ex, plan.on_error):
        # On a cluster the workers write the store's chunks (or HDF5 part files).
        return _write_split_in_place(plan, scaler, ex, writer, name, cache, state, show_progress)
    fresh = name not in state.results
    rs = RunningStats(source.channels, source.dtype) if fresh else state.results[name]
    per_batch = plan.rows(name)
    if cache.holds(name):
        batches = ((b, None) for b in cache.batches(per_batch))
    else:
        tasks = shards(source, [name], per_batch, parallel=ex.parallel, chunk=_chunk(ex))
        batches = ex.map(partial(read_task, on_error=plan.on_error, with_stats=fresh), tasks)

    def scale(batch_stats):
        batch, part = batch_stats
        return (batch, part, *scaler.transform_batch(_as_array(batch, shape), plan.dtype))

    with progress(len(split), f"write {name}", show_progress) as bar:
        # Reading and scaling run one batch ahead in a thread (zlib, libjpeg
        # and numpy release the GIL) while this one writes.
        for batch, part, y, flat in ahead(batches, scale):
            if fresh:
                rs.merge(part)
                state.skipped.extend(batch.skipped)
            state.n_flat += flat
            writer.write(name, y, batch.labels, [stored(f) for f in batch.files] if batch.files else None)
            bar.update(len(batch) + len(batch.skipped))
    state.rows[name] = writer.finish_split(name)
    state.results[name] = rs


def _finish(plan: WritePlan, scaler: Scaler, writer, state: _WriteState) -> dict:
    """The stats document of the data read, the attributes, and the result."""
    from . import __version__

    source = plan.source
    warnings = []
    if not scaler.per_image:
        scaling = scaler.scaling(source.dtype, source.channels)
        applied = scaler.applied_document(plan.max_value)
        warnings += [f"{w} (statistics of {applied['fit_split'] if applied else plan.fit_split})"
                     for w in scaling.warnings]
    else:
        scaling, applied = None, None
    if state.n_flat:
        warnings.append(f"{state.n_flat} image(s) had a zero {'std' if scaler.method == 'standardize' else 'spread'}"
                        " in some channel; those channels got scale 1 (a blank image becomes zeros)")
    results = state.results
    # every split read, in the source's order: the written ones and the fit split
    doc = document(source, {n: results[n] for n in source.splits if n in results},
                   plan.fit_split if plan.fit_split in results else plan.names[0],
                   state.skipped, max_value=plan.max_value)
    skipped = list(source.skipped) + state.skipped
    options = _options_attr(plan, scaler, scaling)
    writer.set_attrs(stats=json.dumps(applied or doc), class_names=source.class_names, method=scaler.method,
                     options=options, source=printable(source.name),
                     imgnorm_version=__version__,
                     skipped=[{"file": f, "reason": r} for f, r in _stored(source, skipped)] or None)
    return {"rows": state.rows, "stats": doc, "applied": applied or doc, "warnings": warnings,
            "skipped": skipped, "options": options}


def _options_attr(plan: WritePlan, scaler: Scaler, scaling) -> dict:
    """Every option of the run, for the ``options`` attribute."""
    options = {"per_channel": scaler.per_channel, "per_image": scaler.per_image, "minmax": scaler.minmax,
               "unit": scaler.unit, "clip_rescale": scaler.clip_rescale, "epsilon": scaler.epsilon or 0.0,
               "robust": scaler.robust,
               "clip_percentiles": list(scaler.clip_percentiles) if scaler.clip_percentiles else None,
               "fit_split": plan.fit_split,
               "stats": scaler._preset or ("constants" if scaler._constants else None)
               or ("file" if scaler._doc is not None else None),
               "max_value": plan.max_value, "dtype": plan.dtype.name, "layout": plan.layout,
               "compression": plan.compression, **plan.source.reading()}
    if scaling is not None:  # y = (x - offset) / scale on the pixels' scale
        options["offset"] = scaling.data_offset.tolist()
        options["scale"] = scaling.data_scale.tolist()
        if scaling.clip_lo is not None:  # after clipping the pixels to [clip_lo, clip_hi]
            options["clip_lo"], options["clip_hi"] = scaling.clip_lo.tolist(), scaling.clip_hi.tolist()
    return options


# ------------------------------------------------------------ stored values (inspect)


def _stored_blocks(info: dict, name: str):
    """``/<name>/x`` of an imgnorm HDF5 file in (n, height, width, channels) blocks."""
    from .readback import iter_stored

    layout = info["attrs"].get("options", {}).get("layout", "nhwc")
    for block in iter_stored(info["path"], name):
        if block.ndim == 2:  # PCA components: one row of values, one channel
            yield block[:, None, :, None]
        else:
            yield block.transpose(0, 2, 3, 1) if layout == "nchw" else block


def stored_stats(info: dict, *, show_progress: bool = False) -> dict:
    """Statistics of the values stored in each split of an HDF5 file (a pass over
    it), keyed by split: the ``global`` and ``per_channel`` entries of a stats document.

    ``info`` is what :func:`imgnorm.store.read_h5_info` gives.
    """
    checks = {}
    for name, s in info["splits"].items():
        if len(s["shape"]) == 2:
            channels = 1
        else:
            channels = s["shape"][1] if info["attrs"].get("options", {}).get("layout") == "nchw" else s["shape"][-1]
        rs = RunningStats(channels, np.float64)
        with progress(s["shape"][0], f"check {name}", show_progress) as bar:
            for block in _stored_blocks(info, name):
                rs.update(np.ascontiguousarray(block, dtype=np.float64))
                bar.update(len(block))
        checks[name] = rs.to_dict()
        checks[name].pop("sums")
        checks[name].pop("shape")
    return checks


def stored_histograms(info: dict, bins: int, *, show_progress: bool = False) -> dict:
    """Per split: ``(edges, counts)`` of the stored values, ``edges`` of shape
    (channels, n + 1) and ``counts`` (channels, n).

    Values scaled feature-wise from integer pixels get one bin per pixel level
    (each level maps to one stored value: the level is found again from the
    recorded offset and scale); others get ``bins`` equal bins over the
    split's stored range (``info["check"]`` from :func:`stored_stats`).
    """
    out = {}
    levels = _level_scaling(info)
    for name, c in info["check"].items():
        lo, hi = c["global"]["min"], c["global"]["max"]
        if lo is None:
            continue
        ch = len(c["per_channel"]["mean"])
        if levels is not None:
            n, offset, scale = levels
            edges = (np.arange(n + 1)[None, :] - 0.5 - offset[:, None]) / scale[:, None]
        else:
            hi = hi if hi > lo else lo + 1
            n, edges = bins, np.tile(np.linspace(lo, hi, bins + 1), (ch, 1))
        counts = np.zeros((ch, n), np.int64)
        with progress(info["splits"][name]["shape"][0], f"histogram {name}", show_progress) as bar:
            for block in _stored_blocks(info, name):
                flat = block.reshape(-1, ch)
                for k in range(ch):
                    if levels is not None:
                        level = np.rint(flat[:, k].astype(np.float64) * scale[k] + offset[k]).astype(np.int64)
                        counts[k] += np.bincount(np.clip(level, 0, n - 1), minlength=n)
                    else:
                        counts[k] += np.histogram(flat[:, k], bins=n, range=(lo, hi))[0]
                bar.update(len(block))
        out[name] = (edges, counts)
    return out


def _level_scaling(info: dict):
    """``(levels, offset, scale)`` when every stored value is one pixel level's, else None."""
    opts = info["attrs"].get("options") or {}
    top = opts.get("max_value")
    if opts.get("per_image") or opts.get("clip_rescale") or "offset" not in opts or top not in (255, 65535):
        return None
    if top == 65535 and opts.get("dtype") == "float16":  # float16 cannot tell 65,536 levels apart
        return None
    dtype = ((info["attrs"].get("stats") or {}).get("splits", {}).get(opts.get("fit_split") or "", {})
             .get("sums", {}).get("dtype"))
    if dtype not in (None, "uint8", "uint16"):
        return None
    return int(top) + 1, np.asarray(opts["offset"], dtype=np.float64), np.asarray(opts["scale"], dtype=np.float64)


class PixelCache:
    """Decoded pixels of the fit split kept between the statistics pass and the
    writing pass, so a JPEG is decoded once.

    A raw file beside the output (reserved up front, removed with the run's
    other temporaries): the process that decodes an image writes it at its
    row, the writing pass reads the rows back with plain reads (a memory map
    would keep them in the process's resident memory). ``split`` None:
    nothing is kept (the fit split is not written, or reading it again is
    cheaper than keeping it).
    """

    def __init__(self, split: str | None = None, image_shape=(), dtype=np.uint8, path: str | None = None,
                 labels: np.ndarray | None = None, files: list[str] | None = None):
        self.split = split
        self.image_shape = tuple(image_shape)
        self.dtype = np.dtype(dtype)
        self.path = path
        self.labels, self.files = labels, files
        self._rows: list[np.ndarray] = []  # the rows written, in split order

    @classmethod
    def for_plan(cls, plan: WritePlan, outputs: OutputSet, beside) -> "PixelCache":
        if not plan.cache_bytes:
            return cls()
        split = plan.source.splits[plan.fit_split]
        return cls(plan.fit_split, plan.shapes[plan.fit_split], plan.source.dtype, outputs.scratch(beside),
                   split.labels, split.files)

    def holds(self, name: str) -> bool:
        return self.split is not None and name == self.split

    def record(self, rows: np.ndarray) -> None:
        """The rows a task wrote (tasks come back in split order)."""
        self._rows.append(np.asarray(rows, dtype=np.int64))

    def batches(self, batch_size: int):
        rows = np.concatenate(self._rows) if self._rows else np.empty(0, np.int64)
        row_bytes = int(np.prod(self.image_shape)) * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            for a in range(0, len(rows), batch_size):
                r = rows[a:a + batch_size]
                x = np.empty((len(r),) + self.image_shape, self.dtype)
                view = memoryview(x.reshape(-1).view(np.uint8))
                i = 0
                while i < len(r):  # one read per run of consecutive rows
                    j = i + 1
                    while j < len(r) and r[j] == r[j - 1] + 1:
                        j += 1
                    if os.preadv(f.fileno(), [view[i * row_bytes:j * row_bytes]], int(r[i]) * row_bytes) != \
                            (j - i) * row_bytes:
                        raise SourceError(f"{printable(self.path)}: the pixel cache was cut short; run again")
                    i = j
                yield Batch(x, self.labels[r] if self.labels is not None else None,
                            [self.files[k] for k in r] if self.files is not None else None, a)

    def close(self) -> None:
        self._rows = []

    def __enter__(self) -> "PixelCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_array(batch: Batch, shape: tuple[int, ...]) -> np.ndarray:
    """The batch as one (n, height, width, channels) array of the expected shape."""
    imgs = batch.images
    if isinstance(imgs, np.ndarray) and imgs.shape[1:] == tuple(shape):
        return imgs
    for i, a in enumerate(imgs):
        _check_shape(a, shape, batch.files[i] if batch.files else f"image {batch.start + i}")
    return np.stack(imgs) if len(imgs) else np.empty((0,) + tuple(shape), np.uint8)


def _check_shape(a: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    """Refuse image ``a`` (from ``where``: a file or "image N") unless it has the expected shape."""
    if a.shape != tuple(shape):
        raise SourceError(f"{printable(where)} has shape {a.shape[1]}x{a.shape[0]}x{a.shape[2]}, expected "
                          f"{shape[1]}x{shape[0]}x{shape[2]}; pass --size WxH to resize all images")
