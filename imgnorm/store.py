"""The HDF5 layout: one group per split, written into a temporary file that
:func:`imgnorm.outputs.atomic_output` moves into place when complete.

::

    /<split>/x      (N, H, W, C) or (N, C, H, W) scaled images, chunked along N
    /<split>/y      (N,) integer labels, where known
    /<split>/files  (N,) source file of each row, for folder sources
    root attributes: stats, class_names, method, options, source, imgnorm_version, skipped
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .errors import OptionError, SourceError
from .outputs import reserve
from .transforms import COMPRESSIONS, LAYOUTS
CHUNK_BYTES = 1 << 20  # HDF5's chunk cache default; chunks of about 1 MiB read and write well
CHUNK_CACHE_BYTES = 2 << 20


class H5Writer:
    """Writes splits batch by batch; every writer has this ``write()`` / ``close()`` shape."""

    def __init__(self, path: str, *, dtype="float32", layout="nhwc", compression="none",
                 reserve_bytes: int = 0):
        if layout not in LAYOUTS:
            raise OptionError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}", option="--layout")
        if compression not in COMPRESSIONS:
            raise OptionError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}",
                              option="--compression")
        self.path = path
        self.dtype = np.dtype(dtype)
        self.layout = layout
        self.compression = compression
        # A chunk cache of several chunks: a batch size given by the user (or
        # compressed output) need not end on a chunk boundary, and a chunk
        # evicted half-written is written twice.
        self._ds: dict[str, dict[str, h5py.Dataset]] = {}
        self._rows: dict[str, int] = {}
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

    def create_split(self, name: str, n: int, image_shape: tuple[int, int, int], *,
                     labels_dtype=None, with_files: bool = False) -> None:
        """Make ``/<name>/x`` for ``n`` images of shape (height, width, channels)."""
        h, w, c = image_shape
        row = (h, w, c) if self.layout == "nhwc" else (c, h, w)
        chunk_n = chunk_rows(n, image_shape, self.dtype)
        g = self.f.create_group(name)
        ds = {"x": g.create_dataset("x", shape=(n,) + row, maxshape=(None,) + row, dtype=self.dtype,
                                    chunks=(chunk_n,) + row, **self._filters())}
        if labels_dtype is not None:
            ds["y"] = g.create_dataset("y", shape=(n,), maxshape=(None,), dtype=labels_dtype,
                                       chunks=(max(1, min(n, 65536)),))
        if with_files:
            ds["files"] = g.create_dataset("files", shape=(n,), maxshape=(None,), dtype=h5py.string_dtype(),
                                           chunks=(max(1, min(n, 4096)),))
        self._ds[name] = ds
        self._rows[name] = 0

    def write(self, name: str, x: np.ndarray, labels=None, files=None) -> None:
        """Append a batch ``x`` of shape (n, height, width, channels), already scaled."""
        ds = self._ds[name]
        a = self._rows[name]
        b = a + len(x)
        if b > ds["x"].shape[0]:
            for d in ds.values():
                d.resize(b, axis=0)
        x = x if self.layout == "nhwc" else x.transpose(0, 3, 1, 2)
        a_direct, b_direct = a, a
        if self.compression == "none" and x.dtype == self.dtype and x.flags.c_contiguous:
            # Whole chunks inside the batch go straight to the file: no filter
            # to run, and no copy through HDF5's chunk cache. The rows before
            # and after them (partial chunks) take the usual path.
            chunk_n = ds["x"].chunks[0]
            a_direct = min(-(-a // chunk_n) * chunk_n, b)
            b_direct = max(a_direct, b // chunk_n * chunk_n)
            for r in range(a_direct, b_direct, chunk_n):
                self._write_chunk(ds["x"], r, x[r - a:r - a + chunk_n])
        if a < a_direct:
            ds["x"][a:a_direct] = x[:a_direct - a]
        if b_direct < b:
            ds["x"][b_direct:b] = x[b_direct - a:]
        if labels is not None and "y" in ds:
            ds["y"][a:b] = labels
        if files is not None and "files" in ds:
            ds["files"][a:b] = files
        self._rows[name] = b

    @staticmethod
    def _write_chunk(d, row: int, x: np.ndarray) -> None:
        d.id.write_direct_chunk((row,) + (0,) * (x.ndim - 1), x)

    def finish_split(self, name: str) -> int:
        """Trim the split to the rows written (fewer when images were skipped)."""
        for d in self._ds[name].values():
            if d.shape[0] != self._rows[name]:
                d.resize(self._rows[name], axis=0)
        return self._rows[name]

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

    def __enter__(self) -> "H5Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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


def read_h5_info(path: str | os.PathLike) -> dict:
    """Splits, shapes, dtypes, chunking, compression, labels and attributes of an imgnorm HDF5 file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SourceError(f"{path}: not a readable HDF5 file ({str(e).split(' (')[0]})") from None
    with f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        splits = {}
        for name, g in f.items():
            if not isinstance(g, h5py.Group) or "x" not in g:
                continue
            x = g["x"]
            s = {"shape": list(x.shape), "dtype": str(x.dtype), "chunks": list(x.chunks) if x.chunks else None,
                 "compression": x.compression or "none"}
            if "y" in g:
                y = g["y"][...]
                s["labels"] = {"dtype": str(y.dtype), "counts": {int(k): int(v) for k, v in
                                                                  zip(*np.unique(y, return_counts=True))}}
            if "files" in g:
                s["files"] = int(g["files"].shape[0])
            splits[name] = s
    if "imgnorm_version" not in attrs:
        raise SourceError(f"{path}: not written by imgnorm (no imgnorm_version attribute)")
    return {"path": path, "attrs": attrs, "splits": splits}


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.tolist() if hasattr(v, "tolist") else v


def iter_stored(path: str, split: str, batch_size: int = 256):
    """Yield ``/<split>/x`` in (n, ...) blocks, a few chunks at a time."""
    with h5py.File(path, "r") as f:
        x = f[split]["x"]
        step = max(batch_size, x.chunks[0] if x.chunks else 1)
        for i in range(0, x.shape[0], step):
            yield x[i:i + step]


def chunk_rows(n: int, image_shape: tuple[int, int, int], dtype) -> int:
    """Images per HDF5 chunk of ``/<split>/x``: about :data:`CHUNK_BYTES`."""
    per_image = max(1, int(np.prod(image_shape)) * np.dtype(dtype).itemsize)
    return max(1, min(n, CHUNK_BYTES // per_image)) if n else 1
