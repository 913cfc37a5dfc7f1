"""The Zarr (v3) layout: the HDF5 file's (:mod:`imgnorm.store`), as a directory
store written into a temporary directory that :class:`imgnorm.outputs.OutputSet`
renames into place when complete.

::

    <store>/<split>/x      (N, H, W, C) or (N, C, H, W) scaled images, chunked along N
    <store>/<split>/y      (N,) integer labels, where known
    <store>/<split>/files  (N,) file of each row, relative to the source: UTF-8 strings,
                           or (N, L) uint8 bytes (zero-padded) when a name is not UTF-8
    root attributes: stats, class_names, method, options, source, imgnorm_version, skipped

The attributes are those of the HDF5 file, as JSON values (Zarr's attributes
are JSON) where HDF5 holds JSON text. ``x`` has the HDF5 file's chunks and
NaN as its fill value, and every chunk is written, zeros included: a chunk
that is missing reads as NaN, never as plausible zeros, and
:func:`check_zarr` finds it.

``zarr`` is the optional extra ``imgnorm[zarr]``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import MissingExtraError, OptionError, SourceError, show_path
from .outputs import reserve
from .store import _JSON_ATTRS, SplitWriter, _Appender, _checked_attr, all_utf8, chunk_rows, labels_and_names
from .formats import check_layout_and_compression

EXTRA = "pip install 'imgnorm[zarr]'"
LABEL_CHUNK = 65536


def check_zarr_output(compression: str) -> None:
    """Usage errors of a .zarr output, raised before anything is made: zarr not
    installed (a :class:`MissingExtraError`, found without importing zarr: 0.2 s,
    which the pipeline spends in a thread beside the fit pass instead), or the
    HDF5-only lzf compression."""
    import importlib.util

    if importlib.util.find_spec("zarr") is None:
        raise MissingExtraError(f"a .zarr output needs zarr, which is not installed: {EXTRA}")
    _refuse_hdf5_only(compression)


def _refuse_hdf5_only(compression: str) -> None:
    if compression == "lzf":
        raise OptionError("lzf is an HDF5 filter; a Zarr store takes --compression gzip or none",
                          option="--compression")


def need_zarr():
    """The ``zarr`` module, or a :class:`MissingExtraError` naming the extra."""
    try:
        import zarr
    except ImportError:
        raise MissingExtraError(f"a .zarr output needs zarr, which is not installed: {EXTRA}") from None
    return zarr


def _array_config() -> dict:
    # Every chunk written, even one equal to the fill value: the store's chunk
    # count is then a check that nothing is missing.
    return {"write_empty_chunks": True}


class ZarrWriter(SplitWriter):
    """Writes splits batch by batch into a Zarr v3 store; the shape of :class:`imgnorm.store.H5Writer`."""

    def __init__(self, path: str, *, dtype="float32", layout="nhwc", compression="none", reserve_bytes: int = 0):
        check_layout_and_compression(layout, compression)
        _refuse_hdf5_only(compression)
        zarr = need_zarr()
        self.zarr = zarr
        self.path = path
        self.dtype = np.dtype(dtype)
        self.layout = layout
        self.compression = compression
        if reserve_bytes:
            reserve(path, reserve_bytes)
        self.root = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
        self._ds: dict[str, dict[str, _Appender]] = {}
        self._names_as_bytes: dict[str, int] = {}  # split -> name length, where names are stored as bytes

    def _compressors(self):
        return self.zarr.codecs.GzipCodec(level=4) if self.compression == "gzip" else None

    def create_split(self, name: str, n: int, image_shape: tuple[int, ...], *,
                     labels_dtype=None, files: list[str] | None = None) -> None:
        """Make ``<name>/x`` for ``n`` images of shape (height, width, channels) (or vectors (k,))."""
        row = chunk_shape_row(image_shape, self.layout)
        chunk_n = chunk_rows(n, image_shape, self.dtype)
        g = self.root.create_group(name)
        arrays = {"x": g.create_array("x", shape=(n,) + row, chunks=(chunk_n,) + row, dtype=self.dtype,
                                      fill_value=np.nan, compressors=self._compressors(),
                                      config=_array_config())}
        if labels_dtype is not None:
            arrays["y"] = g.create_array("y", shape=(n,), chunks=(max(1, min(n, LABEL_CHUNK)),),
                                         dtype=np.dtype(labels_dtype), fill_value=0, compressors=None,
                                         config=_array_config())
        if files is not None:
            raw = [os.fsencode(f) for f in files]
            if all_utf8(raw):
                arrays["files"] = g.create_array("files", shape=(n,), chunks=(max(1, min(n, LABEL_CHUNK)),),
                                                 dtype=str, fill_value="", compressors=None, config=_array_config())
                arrays["files"].attrs["encoding"] = "utf-8"
            else:
                # Zarr v3 has no specified fixed-length bytes type: the names' bytes
                # as rows of uint8, zero-padded (a file name holds no NUL byte).
                length = max(len(b) for b in raw)
                self._names_as_bytes[name] = length
                arrays["files"] = g.create_array("files", shape=(n, length), chunks=(max(1, min(n, LABEL_CHUNK)),
                                                                                    length),
                                                 dtype=np.uint8, fill_value=0, compressors=None,
                                                 config=_array_config())
                arrays["files"].attrs["encoding"] = "bytes"
        self._ds[name] = {k: _Appender(a, direct=False) for k, a in arrays.items()}
        if self.compression == "none":
            self._ds[name]["x"] = _RawChunks(arrays["x"], os.path.join(self.path, name, "x"))

    def _names(self, name: str, files: list[str]) -> np.ndarray:
        return encode_names(files, self._names_as_bytes.get(name))

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk of ``<name>/x``: a task that writes in place writes whole ones."""
        return self._ds[name]["x"].n

    def part_sink(self, name: str):
        """What a task calls with ``(split, start, values)`` to write its rows: into the store."""
        from functools import partial

        return partial(write_rows, self.path)

    def finish_in_place(self, name: str, n: int, labels, files, bounds=None) -> int:
        """End a split whose ``x`` the tasks wrote (all ``n`` rows): its labels and names go in here."""
        self._ds[name]["x"].row = n
        self._append_labels_and_names(name, n, labels, files)
        return self.finish_split(name)

    def set_attrs(self, **attrs) -> None:
        """Root attributes: JSON values (the HDF5 file's JSON text, parsed)."""
        values = {}
        for k, v in attrs.items():
            if v is None:
                continue
            if k in _JSON_ATTRS and isinstance(v, str):
                v = json.loads(v)
            values[k] = v
        self.root.attrs.update(values)

    def close(self) -> None:
        self._ds.clear()

    def abort(self) -> None:
        self._ds.clear()


def chunk_shape_row(image_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The stored shape of one row: (H, W, C), (C, H, W), or a vector's (k,)."""
    if len(image_shape) == 1:
        return tuple(image_shape)
    h, w, c = image_shape
    return (h, w, c) if layout == "nhwc" else (c, h, w)


def encode_names(files: list[str], length: int | None) -> np.ndarray:
    """File names as the ``files`` array stores them: strings, or zero-padded byte rows."""
    if length is None:
        return np.array(files, dtype=str) if len(files) else np.empty(0, dtype=str)
    out = np.zeros((len(files), length), np.uint8)
    for i, f in enumerate(files):
        b = os.fsencode(f)
        out[i, :len(b)] = np.frombuffer(b, np.uint8)
    return out


def decode_names(stored: np.ndarray) -> list[str]:
    """The ``files`` array back as file names (``os.fsdecode``: undecodable bytes as surrogate escapes)."""
    if stored.ndim == 2:
        return [os.fsdecode(bytes(r).rstrip(b"\0")) for r in stored]
    return [str(s) for s in stored]


def write_rows(store: str, split: str, start: int, values: np.ndarray) -> None:
    """Write rows ``start:start+len(values)`` of ``<split>/x`` (whole chunks) from a task."""
    zarr = need_zarr()
    x = zarr.open_array(zarr.storage.LocalStore(store), path=f"{split}/x", mode="r+", zarr_format=3)
    if not x.compressors and x.shape[0]:  # uncompressed: whole chunks as files, the edge one through zarr
        n = x.chunks[0]
        whole = min(len(values), (x.shape[0] - start) // n * n) if start % n == 0 else 0
        folder = os.path.join(store, split, "x")
        for r in range(0, whole, n):
            _write_raw_chunk(folder, (start + r) // n, values[r:r + n], x.dtype)
        if whole < len(values):
            x[start + whole:start + len(values)] = values[whole:]
        return
    x[start:start + len(values)] = values


def _write_raw_chunk(folder: str, index: int, values: np.ndarray, dtype) -> None:
    """One whole chunk of an uncompressed array, as zarr stores it: the chunk's
    values, C order, little-endian (the ``bytes`` codec, the only one), at the
    default chunk key ``c/<index>/0/...`` (one chunk across the other axes).
    zarr's own write path copies each chunk several times through its event
    loop (730 MB/s here); this is one write."""
    path = os.path.join(folder, "c", str(index), *["0"] * (values.ndim - 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    with open(path, "wb") as f:
        f.write(memoryview(data).cast("B"))


class _RawChunks(_Appender):
    """The appender of an uncompressed ``x``: whole chunks straight to their files
    (as :class:`imgnorm.store._Appender` hands HDF5 whole chunks), the last,
    partial one through zarr (which pads it to a chunk with the fill value)."""

    def __init__(self, array, folder: str):
        super().__init__(array, direct=False)
        self.folder = folder

    def _write_chunks(self, rows: np.ndarray) -> None:
        for r in range(0, len(rows), self.n):
            self._write(rows[r:r + self.n])

    def _write(self, chunk: np.ndarray) -> None:
        if len(chunk) < self.n:
            return super()._write(chunk)
        _write_raw_chunk(self.folder, self.row // self.n, chunk, self.d.dtype)
        self.row += self.n


def _open(path: str):
    zarr = need_zarr()
    if not os.path.isfile(os.path.join(path, "zarr.json")):
        raise SourceError(f"{show_path(path)}: not a Zarr store (no zarr.json)")
    try:
        return zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r", zarr_format=3)
    except Exception as e:  # zarr's own errors for a malformed store are of many kinds
        raise SourceError(f"{show_path(path)}: not a readable Zarr v3 store ({str(e).splitlines()[0][:120]})") \
            from None


def read_zarr_info(path: str | os.PathLike) -> dict:
    """Splits, shapes, dtypes, chunking, compression, labels and attributes of an
    imgnorm Zarr store: what :func:`imgnorm.store.read_h5_info` gives for HDF5."""
    path = os.fspath(path).rstrip(os.sep)
    if not os.path.isdir(path):
        raise SourceError(f"{show_path(path)}: no such Zarr store")
    root = _open(path)
    raw = root.attrs.asdict()
    if "imgnorm_version" not in raw:
        raise SourceError(f"{show_path(path)}: not written by imgnorm (no imgnorm_version attribute)")
    attrs = {k: _checked_attr(path, k, json.dumps(v) if k in _JSON_ATTRS and not isinstance(v, str) else v)
             for k, v in raw.items()}
    layout = (attrs.get("options") or {}).get("layout", "nhwc")
    splits = {}
    for name, g in sorted(root.groups()):
        if "x" in g:
            splits[name] = _split_info(path, name, g, layout)
    return {"path": path, "attrs": attrs, "splits": splits, "format": "zarr"}


def _split_info(path: str, name: str, g, layout: str) -> dict:
    x = g["x"]
    if not hasattr(x, "shape") or x.ndim not in (2, 4) or x.dtype.kind != "f":
        raise SourceError(f"{show_path(path)}: {name}/x is not a 4-D (or, PCA, 2-D) array of floats; the store was "
                          "changed after imgnorm wrote it, or was not written by imgnorm")
    codecs = [type(c).__name__ for c in getattr(x, "compressors", ())]
    s = {"shape": list(x.shape), "dtype": str(x.dtype), "chunks": list(x.chunks),
         "compression": "gzip" if "GzipCodec" in codecs else ("none" if not codecs else ",".join(codecs))}
    return {**s, **labels_and_names(path, name, g, x.shape[0])}


def iter_zarr(path: str, split: str, batch_size: int = 256):
    """Yield ``<split>/x`` in (n, ...) blocks, whole chunks at a time."""
    x = _open(path)[split]["x"]
    step = max(batch_size, x.chunks[0])
    step -= step % x.chunks[0]
    for i in range(0, x.shape[0], step):
        yield x[i:i + step]


def check_zarr(path: str) -> list[str]:
    """The arrays of an imgnorm Zarr store that miss chunks (each named, with
    how many): an empty list when every chunk is there."""
    root = _open(path)
    problems = []
    for name, g in sorted(root.groups()):
        for key in ("x", "y", "files"):
            if key in g:
                a = g[key]
                have, want = a.nchunks_initialized, a.nchunks
                if have != want:
                    problems.append(f"{name}/{key}: {want - have} of {want} chunk(s) missing")
    return problems
