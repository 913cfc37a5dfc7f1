"""compute_stats over real decoding: equal to numpy on the stacked pixels,
identical for any batch size and worker count."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgnorm.pipeline import compute_stats
from imgnorm.sources import open_source


def decoded_pixels(files):
    return np.concatenate([np.asarray(Image.open(f).convert("RGB")).reshape(-1, 3) for f in files]).astype(float)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 12, 17])
def test_folder_stats_equal_numpy_for_any_batching(photo_folder, workers, batch_size):
    src = open_source(photo_folder)
    doc = compute_stats(src, batch_size=batch_size, workers=workers)
    assert doc == compute_stats(src, batch_size=64, workers=1)  # bit-identical
    for name, split in src.splits.items():
        px = decoded_pixels(split.files)
        s = doc["splits"][name]
        np.testing.assert_allclose(s["per_channel"]["mean"], px.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(s["per_channel"]["std"], px.std(axis=0), rtol=1e-12)
        assert s["global"]["mean"] == pytest.approx(px.mean(), rel=1e-12)
        assert s["global"]["std"] == pytest.approx(px.std(), rel=1e-12)
        assert s["images"] == len(split.files) and s["pixels"] == len(px)
        assert s["shape"] is None  # the fixture mixes sizes
    assert doc["fit_split"] == "train" and doc["channels"] == 3 and doc["max_value"] == 255


def test_npz_stats_and_one_split(mnist_npz_compressed):
    path, arrays = mnist_npz_compressed
    doc = compute_stats(open_source(path), split="test", batch_size=7)
    assert list(doc["splits"]) == ["test"] and doc["fit_split"] == "test"
    x = arrays["x_test"].astype(float)
    t = doc["splits"]["test"]
    assert t["global"]["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert t["global"]["std"] == pytest.approx(x.std(), rel=1e-12)
    assert t["shape"] == [8, 8, 1]


def test_progress_bars_only_on_a_terminal_and_not_quiet(monkeypatch):
    import io
    import sys

    from imgnorm.workers import _NoBar, progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress(10, "x", True)  # not a terminal: a log line every few seconds, not a bar
    assert type(bar).__name__ == "_LogBar"
    bar.update(3)
    assert log.getvalue() == ""  # not yet: short runs print nothing
    monkeypatch.setattr(type(bar), "EVERY", 0.0)
    with progress(10, "stats train", "log") as bar:
        bar.update(4)
    assert log.getvalue().splitlines()[0].startswith("stats train: 4/10 images (40%), 0 s, ")
    assert type(progress(10, "x", "none")) is _NoBar
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert isinstance(progress(10, "x", False), _NoBar)  # --quiet
    with progress(10, "stats train", True) as bar:
        bar.update(10)
    assert "stats train" in tty.getvalue()


def test_ahead_keeps_order_raises_errors_and_stops_early():
    from imgnorm.workers import ahead
    assert list(ahead(iter(range(50)), lambda v: v * 2)) == [v * 2 for v in range(50)]

    def boom(v):
        if v == 7:
            raise ValueError("seven")
        return v
    with pytest.raises(ValueError, match="seven"):
        list(ahead(iter(range(20)), boom))
    closed = []

    def source():
        try:
            yield from range(1000)
        finally:
            closed.append(True)
    for v in ahead(source(), lambda v: v):
        if v == 3:
            break
    assert closed == [True]  # the producer's generator was closed, not left running


def _die(source, task):
    import os
    os._exit(3)  # as the kernel's out-of-memory killer would end a worker


def test_a_dead_worker_is_a_clean_error_not_a_hang(photo_folder):
    from imgnorm.errors import ImgnormError
    from imgnorm.workers import LocalExecutor
    with LocalExecutor(open_source(photo_folder), 2) as ex:
        assert ex.parallel
        with pytest.raises(ImgnormError, match="a decoding worker process died"):
            list(ex.map(_die, [1, 2, 3]))


def test_one_worker_pool_serves_every_split(photo_folder, monkeypatch):
    import imgnorm.workers as workers
    pools = []
    real = workers._Pool.__init__
    monkeypatch.setattr(workers._Pool, "__init__", lambda self, *a, **k: pools.append(a) or real(self, *a, **k))
    src = open_source(photo_folder)
    assert len(src.splits) == 2
    doc = compute_stats(src, workers=2)
    assert len(pools) == 1 and pools[0][0] is src
    assert doc == compute_stats(src, workers=1)


class _Recording:
    """An executor that runs tasks here and records them; ``chunk`` images a task, as Dask's."""
    parallel = True
    writes_in_place = False

    def __init__(self, chunk):
        self.chunk, self.tasks = chunk, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def map(self, fn, tasks):
        for t in tasks:
            self.tasks.append(t)
            yield fn(self.source, t)


def test_counting_tasks_span_the_executors_chunk_not_the_batch(tmp_path, rng):
    # a stats task holds no pixels: Dask's tasks of hundreds of images cost the
    # scheduler a fifth of tasks capped at the batch size (64 for mixed sizes)
    from conftest import write_jpeg
    from imgnorm.stats import document_bytes
    for i in range(30):
        write_jpeg(tmp_path / "p" / "c" / f"{i}.jpg", rng, size=(8 + i % 3, 8))
    src = open_source(tmp_path / "p")
    want = document_bytes(compute_stats(src, workers=1))
    ex = _Recording(chunk=12)
    ex.source = src
    assert document_bytes(compute_stats(src, executor=ex, batch_size=5)) == want
    assert [t.stop - t.start for t in ex.tasks] == [12, 12, 6]


def test_the_cache_task_writes_each_image_to_its_row_and_names_one_of_another_shape(tmp_path, rng):
    from conftest import write_jpeg
    from imgnorm.errors import SourceError
    from imgnorm.pipeline import Shard, cache_task
    for i in range(5):
        write_jpeg(tmp_path / "p" / "c" / f"{i}.jpg", rng, size=(8, 6) if i != 3 else (6, 8))
    src = open_source(tmp_path / "p")
    split = src.splits[next(iter(src.splits))]
    cache = tmp_path / "cache"
    cache.write_bytes(bytes(5 * 6 * 8 * 3))
    rs, skipped, rows = cache_task(src, Shard(split.name, 0, 3), str(cache), (6, 8, 3))
    assert list(rows) == [0, 1, 2] and rs.images_ == 3 and skipped == []
    got = np.frombuffer(cache.read_bytes(), np.uint8).reshape(5, 6, 8, 3)
    for i in range(3):
        np.testing.assert_array_equal(got[i], np.asarray(Image.open(split.files[i]).convert("RGB")))
    assert not got[3:].any()
    with pytest.raises(SourceError, match=r"3\.jpg has shape 6x8x3, expected 8x6x3; pass --size"):
        cache_task(src, Shard(split.name, 2, 5), str(cache), (6, 8, 3))
