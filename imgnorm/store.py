"""The HDF5 layout: one group per split, written into a temporary file that
:func:`imgnorm.outputs.atomic_output` moves into place when complete.

::

    /<split>/x      (N, H, W, C) or (N, C, H, W) scaled images, chunked along N
    /<split>/y      (N,) integer labels, where known
    /<split>/files  (N,) file of each row, relative to the source (fixed-length bytes)
    root attributes: stats, class_names, method, options, source, imgnorm_version, skipped
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .errors import SourceError, StatsFileError, show_path
from .outputs import reserve
from .formats import LAYOUTS, METHODS, check_layout_and_compression
CHUNK_BYTES = 1 << 20  # HDF5's chunk cache default; chunks of about 1 MiB read and write well
CHUNK_CACHE_BYTES = 2 << 20


class SplitWriter:
    """What every writer shares: splits appended batch by batch through their
    :class:`_Appender` s (``self._ds[split][key]``), labels and names alongside."""

    LABEL_BLOCK = 65536

    def write(self, name: str, x: np.ndarray, labels=None, files=None) -> None:
        """Append a batch ``x`` of shape (n, height, width, channels), already scaled,
        with its labels and file names."""
        ds = self._ds[name]
        ds["x"].append(x if self.layout == "nhwc" or x.ndim != 4 else x.transpose(0, 3, 1, 2))
        if labels is not None and "y" in ds:
            ds["y"].append(np.asarray(labels))
        if files is not None and "files" in ds:
            ds["files"].append(self._names(name, files))

    def _append_labels_and_names(self, name: str, n: int, labels, files) -> None:
        """All ``n`` labels and names of a split whose images the tasks wrote, in blocks."""
        ds = self._ds[name]
        for i in range(0, n, self.LABEL_BLOCK):
            if labels is not None and "y" in ds:
                ds["y"].append(np.asarray(labels[i:i + self.LABEL_BLOCK]))
            if files is not None and "files" in ds:
                ds["files"].append(self._names(name, files[i:i + self.LABEL_BLOCK]))

    def finish_split(self, name: str) -> int:
        """Write what is left and trim the split to the rows written (fewer when images were skipped)."""
        return [a.finish() for a in self._ds[name].values()][0]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()  # a failure here (disk full on the last flush) propagates
        else:
            self.abort()


class H5Writer(SplitWriter):
    """Writes splits batch by batch; every writer has this ``write()`` / ``close()`` shape."""

    def __init__(self, path: str, *, dtype="float32", layout="nhwc", compression="none",
                 reserve_bytes: int = 0, parts: tuple[str, str] | None = None):
        check_layout_and_compression(layout, compression)
        self.path = path
        self.dtype = np.dtype(dtype)
        self.layout = layout
        self.compression = compression
        # (folder the tasks write part files into, its name relative to the file's
        # folder once committed): /<split>/x then joins the parts as a virtual dataset.
        self.parts = parts
        self._rows_shape: dict[str, tuple] = {}
        # A chunk cache of several chunks: a batch size given by the user (or
        # compressed output) need not end on a chunk boundary, and a chunk
        # evicted half-written is written twice.
        self._ds: dict[str, dict[str, _Appender]] = {}
        # locking=False: the file is this run's own temporary, held under
        # imgnorm's lock (outputs.py); HDF5's own lock on it would conflict.
        self.f = h5py.File(path, "w", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_w0=1.0, rdcc_nslots=10007, locking=False)
        if reserve_bytes:
            try:
                reserve(path, reserve_bytes)
            except BaseException:
                self.abort()
                raise
        # Dataset handles (self._ds) stay open for the whole write: reopening
        # them per batch makes HDF5 flush and close on every batch.

    def _filters(self) -> dict:
        if self.compression == "gzip":
            # deflate + shuffle are built into every HDF5 library, so any reader opens the file
            return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        if self.compression == "lzf":
            return {"compression": "lzf", "shuffle": True}
        return {}

    def create_split(self, name: str, n: int, image_shape: tuple[int, ...], *,
                     labels_dtype=None, files: list[str] | None = None) -> None:
        """Make ``/<name>/x`` for ``n`` images of shape (height, width, channels),
        or of vectors of shape (k,) (PCA components; no layout applies).

        ``files``: the names ``/<name>/files`` may hold (each row's is given to
        :meth:`write`), which size its fixed-length strings.
        """
        if len(image_shape) == 1:
            row = tuple(image_shape)
        else:
            h, w, c = image_shape
            row = (h, w, c) if self.layout == "nhwc" else (c, h, w)
        chunk_n = chunk_rows(n, image_shape, self.dtype)
        g = self.f.create_group(name)
        self._rows_shape[name] = (chunk_n, row)
        ds = {} if self.parts else {
            "x": g.create_dataset("x", shape=(n,) + row, maxshape=(None,) + row, dtype=self.dtype,
                                  chunks=(chunk_n,) + row, **self._filters())}
        if labels_dtype is not None:
            ds["y"] = g.create_dataset("y", shape=(n,), maxshape=(None,), dtype=labels_dtype,
                                       chunks=(max(1, min(n, 65536)),))
        if files is not None:
            ds["files"] = _files_dataset(g, n, files)
        self._ds[name] = {k: _Appender(d, direct=k == "x" and self.compression == "none") for k, d in ds.items()}

    def _names(self, name: str, files: list[str]) -> np.ndarray:
        return np.array([os.fsencode(f) for f in files], dtype=self._ds[name]["files"].d.dtype)

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk of ``/<name>/x``: a task that writes in place writes whole ones."""
        return self._rows_shape[name][0]

    def part_sink(self, name: str):
        """What a task calls with ``(split, start, values)`` to write its rows: a part file."""
        from functools import partial

        return partial(write_part, self.parts[0], chunk_rows=self.chunk_rows(name),
                       filters=self._filters())

    def finish_in_place(self, name: str, n: int, labels, files, bounds: list[tuple[int, int]]) -> int:
        """End a split whose rows the tasks wrote as part files (rows ``bounds``):
        ``/<name>/x`` joins them as a virtual dataset (relative paths; NaN where
        a part is missing); the labels and names go in here."""
        _, row = self._rows_shape[name]
        layout = h5py.VirtualLayout(shape=(n,) + row, dtype=self.dtype)
        for a, b in bounds:
            rel = os.path.join(self.parts[1], part_name(name, a))
            layout[a:b] = h5py.VirtualSource(rel, "x", shape=(b - a,) + row, dtype=self.dtype)
        g = self.f[name]
        g.create_virtual_dataset("x", layout, fillvalue=np.nan)
        g["x"].attrs["parts"] = len(bounds)
        self._append_labels_and_names(name, n, labels, files)
        for a in self._ds[name].values():
            a.finish()
        return n

    def set_attrs(self, **attrs) -> None:
        for k, v in attrs.items():
            if v is not None:
                self.f.attrs[k] = v if isinstance(v, str) else json.dumps(v)

    def close(self) -> None:
        """Flush and close; a failure (disk full on the last flush) is an OSError."""
        self._ds.clear()
        try:
            self.f.close()
        except (OSError, RuntimeError) as e:  # h5py reports a failed flush on close as RuntimeError
            raise OSError(f"closing the HDF5 file failed: {e}") from None
        trim_to_eoa(self.path)

    def abort(self) -> None:
        """Close after an error, ignoring what HDF5 says: the file is being thrown away."""
        self._ds.clear()
        try:
            self.f.close()
        except Exception:
            pass

def part_name(split: str, start: int) -> str:
    """The part file holding rows ``start:`` of ``split`` (matched by :data:`imgnorm.outputs.PART`)."""
    return f"{split}.{start:010d}.h5"


def write_part(folder: str, split: str, start: int, values: np.ndarray, *, chunk_rows: int, filters: dict) -> None:
    """Write rows ``start:start+len(values)`` of ``/<split>/x`` as the part file
    ``folder/<split>.<start>.h5`` (dataset ``x``), committed by a rename: a
    part is there whole or not at all, and a task run twice (its worker died)
    writes the same part again."""
    import secrets

    final = os.path.join(folder, part_name(split, start))
    tmp = f"{final}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            f.create_dataset("x", data=values, chunks=(min(chunk_rows, max(1, len(values))),) + values.shape[1:],
                             **filters)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_parts(path: str) -> list[str]:
    """Of each virtual ``/<split>/x``: the part files that are missing or do
    not match (shape, dtype), one line each; empty when every part is there."""
    problems = []
    folder = os.path.dirname(os.path.abspath(path))
    with h5py.File(path, "r", locking=False) as f:
        for name, g in f.items():
            x = g.get("x") if isinstance(g, h5py.Group) else None
            if not isinstance(x, h5py.Dataset) or not x.is_virtual:
                continue
            missing = []
            for m in x.virtual_sources():
                src = os.path.join(folder, m.file_name)
                lo, hi = m.vspace.get_select_bounds()  # the rows it maps to: (start, ...), (end, ...) inclusive
                want = (hi[0] - lo[0] + 1,) + tuple(x.shape[1:])
                try:
                    with h5py.File(src, "r", locking=False) as p:
                        d = p.get(m.dset_name)
                        ok = isinstance(d, h5py.Dataset) and d.shape == want and d.dtype == x.dtype
                except OSError:
                    ok = False
                if not ok:
                    missing.append(m.file_name)
            if missing:
                problems.append(f"/{name}/x: {len(missing)} of {len(x.virtual_sources())} part file(s) missing "
                                f"or not matching (first: {show_path(missing[0])})")
    return problems


class _Appender:
    """Rows appended to a chunked dataset, handed to HDF5 one whole chunk at a
    time, in row order (the last chunk partial).

    So the file's bytes do not depend on how the rows were batched (batch
    size, workers): HDF5 places chunks in the order they are first written.
    Whole uncompressed chunks go straight to the file (``write_direct_chunk``:
    no filter to run, no copy through HDF5's chunk cache); rows that do not
    fill a chunk wait in a one-chunk buffer.
    """

    def __init__(self, d, direct: bool):
        self.d = d  # an h5py Dataset, or a zarr Array (no direct chunk writes)
        self.n = d.chunks[0]
        self.direct = direct
        self.row = 0  # rows handed to HDF5
        self.buf = np.empty((self.n,) + d.shape[1:], d.dtype)
        self.fill = 0  # rows waiting in buf

    def append(self, x: np.ndarray) -> None:
        i = 0
        if self.fill:  # complete the waiting chunk first
            i = min(self.n - self.fill, len(x))
            self.buf[self.fill:self.fill + i] = x[:i]
            self.fill += i
            if self.fill == self.n:
                self._write(self.buf)
                self.fill = 0
        whole = (len(x) - i) // self.n * self.n
        if whole:
            self._write_chunks(x[i:i + whole])
        rest = len(x) - i - whole
        if rest:
            self.buf[:rest] = x[i + whole:]
            self.fill = rest

    def _write_chunks(self, rows: np.ndarray) -> None:
        """Whole chunks: to HDF5 one at a time (it places them in the order written);
        to zarr in one call (it writes a call's chunks concurrently)."""
        if not isinstance(self.d, h5py.Dataset):
            return self._write(rows)
        for r in range(0, len(rows), self.n):
            self._write(rows[r:r + self.n])

    def _write(self, chunk: np.ndarray) -> None:
        if self.row + len(chunk) > self.d.shape[0]:
            self._resize(self.row + len(chunk))
        if self.direct and len(chunk) == self.n:
            chunk = np.ascontiguousarray(chunk, dtype=self.d.dtype)
            self.d.id.write_direct_chunk((self.row,) + (0,) * (chunk.ndim - 1), chunk)
        else:
            self.d[self.row:self.row + len(chunk)] = chunk
        self.row += len(chunk)

    def finish(self) -> int:
        """Write the last, partial chunk; trim the dataset to the rows written."""
        if self.fill:
            self._write(self.buf[:self.fill])
            self.fill = 0
        if self.d.shape[0] != self.row:
            self._resize(self.row)
        return self.row

    def _resize(self, n: int) -> None:
        if isinstance(self.d, h5py.Dataset):
            self.d.resize(n, axis=0)
        else:
            self.d.resize((n,) + tuple(self.d.shape[1:]))


def _files_dataset(g, n: int, names: list[str]):
    """``/<split>/files``: each row's file name, relative to the source, as
    fixed-length strings of the file system's own bytes.

    Fixed-length strings are read by every HDF5 reader (h5dump, PyTables,
    MATLAB), unlike h5py's variable-length ones; raw bytes keep any name,
    UTF-8 or not, exactly (``os.fsdecode`` gives the name back). The strings
    are marked UTF-8 when every name is, else ASCII (HDF5's only other
    character set) and the attribute ``encoding`` says ``bytes``.
    """
    raw = [os.fsencode(f) for f in names]
    length = max([len(b) for b in raw] + [1])
    encoding = "utf-8" if all_utf8(raw) else "bytes"
    dtype = h5py.string_dtype("utf-8" if encoding == "utf-8" else "ascii", length)
    d = g.create_dataset("files", shape=(n,), maxshape=(None,), dtype=dtype,
                         chunks=(max(1, min(n, max(1, (1 << 20) // length))),))
    d.attrs["encoding"] = encoding
    return d


def all_utf8(raw: list[bytes]) -> bool:
    """Whether every file name (the file system's bytes) is valid UTF-8."""
    try:
        for b in raw:
            b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def trim_to_eoa(path: str) -> None:
    """Cut the file back to HDF5's end-of-file address, dropping unused reserved space.

    The address is read from the superblock (HDF5 file format specification,
    "Superblock"): version 0/1 at byte 40, versions 2/3 at byte 28, 8-byte offsets.
    """
    with open(path, "rb+") as f:
        head = f.read(48)
        if head[:8] != b"\x89HDF\r\n\x1a\n":
            return
        version = head[8]
        if head[13 if version in (0, 1) else 9] != 8:
            return  # offsets of another size: leave the file as it is
        at = 40 if version in (0, 1) else 28
        if version == 1:
            at += 4  # version 1 adds indexed-storage K and a reserved field
        eoa = int.from_bytes(head[at:at + 8], "little")
        if 0 < eoa < os.fstat(f.fileno()).st_size:
            f.truncate(eoa)


# imgnorm's own attributes are a few KB; one of megabytes was not written by it.
MAX_ATTR_BYTES = 16 << 20
# Memory the attribute reader may take beyond what the process had: HDF5
# converts a variable-length string through buffers of several times its size.
ATTR_READER_MEMORY = 512 << 20


def read_h5_info(path: str | os.PathLike) -> dict:
    """Splits, shapes, dtypes, chunking, compression, labels and attributes of an imgnorm HDF5 file.

    Every attribute imgnorm reads is checked (type, JSON, every number of
    the stats document); a malformed one is a :class:`SourceError` naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(f"{show_path(path)}: no such file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise SourceError(f"{show_path(path)}: not a readable HDF5 file ({str(e).split(' (')[0]})") from None
    with f:
        if "imgnorm_version" not in f.attrs:
            raise SourceError(f"{show_path(path)}: not written by imgnorm (no imgnorm_version attribute)")
        raw = read_attributes(path)
        attrs = {k: _checked_attr(path, k, v) for k, v in raw.items()}
        layout = (attrs.get("options") or {}).get("layout", "nhwc")
        splits = {name: _split_info(path, name, g, layout) for name, g in f.items()
                  if isinstance(g, h5py.Group) and "x" in g}
    return {"path": path, "attrs": attrs, "splits": splits}


def read_attributes(path: str) -> dict:
    """The root attributes of an HDF5 file (text decoded), read with bounded memory.

    HDF5 reads a variable-length string attribute whole (through buffers of
    several times its size) and its length is not known before, so the
    attributes are read in a forked child whose address space is capped:
    a huge one fails there, naming itself, and this process never grows.
    """
    import pickle
    import resource

    from .interrupts import held

    r, w = os.pipe()
    with held():  # not inside fork's at-fork callbacks; the child never leaves (os._exit)
        pid = os.fork()
        if pid == 0:  # the reader
            code = 0
            try:
                os.close(r)
                soft, hard = resource.getrlimit(resource.RLIMIT_AS)
                cap = _vm_size() + ATTR_READER_MEMORY
                resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
                out = _read_attributes_here(path)
                with os.fdopen(w, "wb") as pipe:
                    pickle.dump(out, pipe)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    try:
        result = pickle.loads(data)
    except Exception:
        raise SourceError(f"{show_path(path)}: its attributes could not be read within "
                          f"{ATTR_READER_MEMORY >> 20} MB; one is too large for imgnorm's metadata") from None
    if isinstance(result, tuple):
        raise SourceError(f"{show_path(path)}: attribute {result[0]!r} {result[1]}")
    return result


def _read_attributes_here(path: str):
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        for name in f.attrs:
            try:
                v = f.attrs[name]
            except (MemoryError, OSError, ValueError, TypeError) as e:
                why = "is too large to read" if isinstance(e, MemoryError) or "alloc" in str(e) else \
                    f"cannot be read ({str(e).splitlines()[0][:100]})"
                return (name, why)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if isinstance(v, str) and len(v) > MAX_ATTR_BYTES:
                return (name, f"holds {len(v):,} characters, too many for imgnorm's metadata")
            if hasattr(v, "nbytes") and v.nbytes > MAX_ATTR_BYTES:
                return (name, f"holds {v.nbytes:,} bytes, too many for imgnorm's metadata")
            out[name] = v.tolist() if hasattr(v, "tolist") else v
    return out


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


_JSON_ATTRS = {"options": dict, "class_names": list, "skipped": list, "stats": dict}


def _checked_attr(path: str, name: str, v):
    """An attribute imgnorm reads, parsed and checked; others are returned as they are."""
    from .stats import check_stats_document

    def bad(what: str) -> SourceError:
        return SourceError(f"{show_path(path)}: attribute {name!r} {what}; the file was changed after imgnorm "
                           "wrote it, or was not written by imgnorm")

    if name in ("imgnorm_version", "source", "method"):
        if not isinstance(v, str):
            raise bad("is not text")
        if name == "method" and v not in METHODS + ("whiten",):
            raise bad(f"is {v[:40]!r}, not one of {', '.join(METHODS + ('whiten',))}")
        return v
    if name not in _JSON_ATTRS:
        return v
    if not isinstance(v, str):
        raise bad("is not JSON text")
    try:
        parsed = json.loads(v)
    except (ValueError, RecursionError):
        raise bad("is not valid JSON") from None
    if not isinstance(parsed, _JSON_ATTRS[name]):
        raise bad(f"is not a JSON {'object' if _JSON_ATTRS[name] is dict else 'list'}")
    if name == "class_names" and not all(isinstance(c, str) for c in parsed):
        raise bad("holds names that are not text")
    if name == "options" and parsed.get("layout", "nhwc") not in LAYOUTS:
        raise bad(f"has layout {parsed.get('layout')!r}, not one of {', '.join(LAYOUTS)}")
    if name == "stats":
        try:
            check_stats_document(parsed)
        except StatsFileError as e:
            raise bad(f"is not a valid stats document ({e})") from None
    return parsed


def _split_info(path: str, name: str, g, layout: str) -> dict:
    x = g["x"]
    if not isinstance(x, h5py.Dataset) or x.ndim not in (2, 4) or x.dtype.kind != "f":
        raise SourceError(f"{show_path(path)}: /{name}/x is not a 4-D (or, PCA, 2-D) array of floats; the file was "
                          "changed after imgnorm wrote it, or was not written by imgnorm")
    s = {"shape": list(x.shape), "dtype": str(x.dtype), "chunks": list(x.chunks) if x.chunks else None,
         "compression": x.compression or "none"}
    if x.is_virtual:  # joined from part files written by a cluster's workers
        s["parts"] = len(x.virtual_sources())
    return {**s, **labels_and_names(path, f"/{name}", g, x.shape[0])}


def labels_and_names(path: str, where: str, g, n: int) -> dict:
    """A written split's label counts and number of file names (HDF5 group or
    Zarr group ``g`` at ``where``, ``n`` images), its ``y`` checked."""
    s = {}
    if "y" in g:
        y = g["y"]
        if not hasattr(y, "ndim") or y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != n:
            raise SourceError(f"{show_path(path)}: {where}/y is not one integer label per image")
        s["labels"] = {"dtype": str(y.dtype), "counts": label_counts(y)}
    if "files" in g:
        s["files"] = int(g["files"].shape[0])
    return s


def iter_h5(path: str, split: str, batch_size: int = 256):
    """Yield ``/<split>/x`` of an HDF5 file in (n, ...) blocks, a few chunks at a time."""
    with h5py.File(path, "r", locking=False) as f:
        x = f[split]["x"]
        step = max(batch_size, x.chunks[0] if x.chunks else 1)
        for i in range(0, x.shape[0], step):
            yield x[i:i + step]


def label_counts(y) -> dict[int, int]:
    """Images per label of a stored ``y`` (HDF5 or Zarr), read in blocks: the
    labels of millions of images stay small."""
    counts: dict[int, int] = {}
    for i in range(0, y.shape[0], 1 << 20):
        for k, v in zip(*np.unique(y[i:i + (1 << 20)], return_counts=True)):
            counts[int(k)] = counts.get(int(k), 0) + int(v)
    return dict(sorted(counts.items()))


def chunk_rows(n: int, image_shape: tuple[int, int, int], dtype) -> int:
    """Images per HDF5 chunk of ``/<split>/x``: about :data:`CHUNK_BYTES`."""
    per_image = max(1, int(np.prod(image_shape)) * np.dtype(dtype).itemsize)
    return max(1, min(n, CHUNK_BYTES // per_image)) if n else 1
