"""IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), plain or gzipped, read in row slices.

The format: two zero bytes, a type code, the number of dimensions, one
big-endian uint32 per dimension, then the values, big-endian, row-major.
``train-images-idx3-ubyte.gz`` holds (N, 28, 28) uint8 images and
``train-labels-idx1-ubyte.gz`` their N labels. The header and the file's
length (the gzip trailer's size for ``.gz``) are checked before anything of
the header's shape is allocated; images are read as a stream, so memory is
bounded by the batch.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from .errors import SourceError, show_path

# IDX type code -> dtype (big-endian as stored)
TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# train-images-idx3-ubyte[.gz], t10k-labels.idx1-ubyte (Kaggle's dotted names), emnist-letters-train-images-...
NAME = re.compile(r"(?P<prefix>.*?)[-_.]?(?P<kind>images|labels)[-_.]idx(?P<ndim>\d)[-_.]ubyte(?P<gz>\.gz)?",
                  re.IGNORECASE)
SPLIT_WORDS = {"train": "train", "t10k": "test", "test": "test", "val": "val", "valid": "val",
               "validation": "val"}


def parse_name(name: str) -> tuple[str, str, str] | None:
    """``(prefix, split, kind)`` of an IDX file name (kind ``images`` or ``labels``), or None.

    ``emnist-digits-train-images-idx3-ubyte.gz`` -> ``("emnist-digits-train", "train", "images")``:
    an images file's labels are the labels file of the same prefix.
    """
    m = NAME.fullmatch(name)
    if not m:
        return None
    prefix = m.group("prefix")
    word = re.split(r"[-_.]", prefix)[-1].lower() if prefix else ""
    return prefix, SPLIT_WORDS.get(word, prefix.lower() or "all"), m.group("kind").lower()


def _open_stream(path: str):
    if path.lower().endswith(".gz"):
        try:
            from isal import igzip as gzip  # ISA-L: about twice zlib's speed
        except ImportError:  # pragma: no cover
            import gzip
        return gzip.open(path, "rb")
    return open(path, "rb")


class IdxArray:
    """One IDX file as an array read in row slices, in the machine's byte order.

    Offers what :class:`imgnorm.sources.ArraySplit` reads from an ``.npz``
    member: ``shape``, ``dtype``, ``row_shape``, ``where``, ``read(start, stop)``.
    """

    def __init__(self, path: str):
        self.path = path
        self.where = show_path(path)
        self._stream = None
        self._next_row = 0
        try:
            with _open_stream(path) as f:
                head = f.read(4)
                if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in TYPES or not 1 <= head[3] <= 4:
                    raise SourceError(f"{self.where}: not an IDX file (its first bytes are {head!r}, expected "
                                      "two zero bytes, a type code and 1..4 dimensions)")
                ndim = head[3]
                dims = f.read(4 * ndim)
                if len(dims) < 4 * ndim:
                    raise SourceError(f"{self.where}: the IDX header ends early; the file is truncated")
        except SourceError:
            raise
        except (OSError, EOFError, ValueError) as e:
            raise SourceError(f"{self.where}: cannot read ({e})") from None
        self.shape = struct.unpack(f">{ndim}I", dims)
        self.stored_dtype = TYPES[head[2]]
        self.dtype = self.stored_dtype.newbyteorder("=")
        self._header_len = 4 + 4 * ndim
        self._check_length()

    def _check_length(self) -> None:
        """The stored bytes must be what the header's shape says, checked before reading any row."""
        want = self._header_len + int(np.prod(self.shape, dtype=object)) * self.stored_dtype.itemsize
        try:
            size = os.path.getsize(self.path)
            if self.path.lower().endswith(".gz"):
                with open(self.path, "rb") as f:  # gzip's trailer: the uncompressed size mod 2**32
                    f.seek(max(0, size - 4))
                    trailer = f.read(4)
                have = struct.unpack("<I", trailer)[0] if len(trailer) == 4 else -1
                ok, want_shown = have == want % 2 ** 32, f"{want} bytes (mod 2**32: {want % 2 ** 32})"
            else:
                have, ok, want_shown = size, size == want, f"{want} bytes"
        except OSError as e:
            raise SourceError(f"{self.where}: cannot read ({e})") from None
        if not ok:
            raise SourceError(f"{self.where}: the header says shape {self.shape} of {self.stored_dtype} "
                              f"({want_shown}) but the file holds {have}; it is truncated or damaged")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def random_access(self) -> bool:
        return not self.path.lower().endswith(".gz")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array of the native byte order (one read at a time)."""
        from .npz import _lock_of
        with _lock_of(self):
            return self._read(start, stop)

    def _read(self, start: int, stop: int) -> np.ndarray:
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.stored_dtype.itemsize
        out = np.empty((stop - start,) + self.row_shape, self.stored_dtype)
        try:
            if self._stream is None or start < self._next_row:
                self.close()
                self._stream = _open_stream(self.path)
                if self.random_access:
                    self._stream.seek(self._header_len)
                else:
                    _skip(self._stream, self._header_len)
                self._next_row = 0
            if start > self._next_row:
                if self.random_access:
                    self._stream.seek(self._header_len + start * row_bytes)
                else:
                    _skip(self._stream, (start - self._next_row) * row_bytes)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                n = self._stream.readinto(view[got:])
                if not n:
                    raise SourceError(f"{self.where}: data ends early at image {start + got // max(row_bytes, 1)}; "
                                      "the file is truncated")
                got += n
            self._next_row = stop
            if stop == len(self):
                if self._stream.read(1):  # and reading to the end makes gzip check its CRC
                    raise SourceError(f"{self.where}: more data than the header's shape; the file is damaged")
                self.close()
        except SourceError:
            self.close()
            raise
        except (OSError, EOFError, ValueError) as e:
            self.close()
            raise SourceError(f"{self.where}: corrupt data ({str(e).strip() or type(e).__name__})") from None
        return out.byteswap().view(self.dtype) if out.dtype != self.dtype else out

    def load_all(self) -> np.ndarray:
        return self.read(0, len(self))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None

    def __getstate__(self):  # an open stream does not travel to another process
        state = dict(self.__dict__)
        state["_stream"] = None
        state["_next_row"] = 0
        state.pop("_lock", None)
        return state


def _skip(stream, nbytes: int) -> None:
    while nbytes > 0:
        chunk = stream.read(min(nbytes, 1 << 24))
        if not chunk:
            raise EOFError("unexpected end of data")
        nbytes -= len(chunk)


def idx_pairs(files: list[str], where: str, only: str | None = None) -> dict[str, tuple[str, str | None]]:
    """Split name -> (images file, labels file of the same prefix or None), from IDX file names.

    ``files`` are paths; with ``only``, just that images file's split. Two
    images files of one split are an error naming both.
    """
    images: dict[str, str] = {}
    labels: dict[str, str] = {}  # prefix -> file
    for f in sorted(files):
        parsed = parse_name(os.path.basename(f))
        if parsed is None:
            continue
        prefix, split, kind = parsed
        if kind == "labels":
            labels[prefix] = f
        elif only is None or f == only:
            if split in images:
                raise SourceError(f"{where}: {show_path(images[split])} and {show_path(f)} are both IDX images of "
                                  f"split {split!r}; point imgnorm at one of them")
            images[split] = f
    return {s: (f, labels.get(parse_name(os.path.basename(f))[0])) for s, f in images.items()}
