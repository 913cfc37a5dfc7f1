"""``.npy`` arrays, bare or inside an ``.npz``, read in row slices without loading them whole.

Headers are checked against the stored bytes before anything of their shape is
allocated; stored (uncompressed) members are read directly at any row, deflated
ones are inflated front to back (ISA-L when available) with their CRC checked.
Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
import zlib

import numpy as np

from .errors import SourceError

try:  # ISA-L's inflate: the same output as zlib's, about twice as fast
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover
    _inflate = zlib

# What zipfile, zlib and numpy's header parser raise on damaged files: an
# unsupported or garbled compression method (NotImplementedError), an
# "encrypted" flag bit (RuntimeError), bad deflate data (zlib.error), bad
# header text (ValueError, SyntaxError), cut-off data (EOFError).
ZIP_ERRORS = (_inflate.error, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
              SyntaxError, struct.error, zlib.error, NotImplementedError, RuntimeError, KeyError, OverflowError,
              MemoryError, TypeError, RecursionError)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def npz_members(path: str) -> dict[str, str]:
    """The ``.npy`` members of an ``.npz``: array name -> member name.

    A file with two members of one name is refused: ``np.load`` would give
    one of them and which one is up to the zip reader.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".npy")]
    except ZIP_ERRORS as e:
        raise SourceError(f"{path}: not a valid .npz file ({first_line(e)})") from None
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise SourceError(f"{path}: holds two arrays named {n[:-4]!r}; which one is meant is ambiguous. "
                              "Re-save it with np.savez")
        seen.add(n)
    return {n[:-4]: n for n in names}


class _InflateStream:
    """The raw deflate data of one zip member, inflated front to back.

    What zipfile's stream does for a deflated member, with ISA-L's inflate
    (inflating dominates reading a compressed .npz) and the CRC checked when
    the last byte has been produced. Output is produced only as asked for,
    so a small member that inflates to gigabytes cannot exhaust memory.
    """

    CHUNK = 1 << 20

    def __init__(self, path: str, offset: int, compress_size: int, file_size: int, crc: int):
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._left_in = compress_size
        self._left_out = file_size
        self._expected_crc = crc
        self._crc = 0
        self._d = _inflate.decompressobj(-15)
        self._pending = b""

    def read(self, n: int) -> bytes:
        out = bytearray(n)
        got = self.readinto(memoryview(out))
        return bytes(out[:got])

    def readinto(self, view) -> int:
        got = 0
        while got < len(view) and self._left_out > 0:
            if not self._pending:
                self._pending = self._inflate(min(len(view) - got, self._left_out))
                if not self._pending:
                    raise EOFError("compressed data ends early")
            n = min(len(self._pending), len(view) - got)
            view[got:got + n] = self._pending[:n]
            self._pending = self._pending[n:]
            got += n
        return got

    def _inflate(self, want: int) -> bytes:
        data = self._d.unconsumed_tail
        if not data and self._left_in > 0:
            data = self._file.read(min(self.CHUNK, self._left_in))
            self._left_in -= len(data)
        # called even with no new input: the inflater may hold output back
        out = self._d.decompress(data, want)
        if len(out) > self._left_out:
            raise ValueError("more data than the member's size")
        self._left_out -= len(out)
        self._crc = _inflate.crc32(out, self._crc)
        if self._left_out == 0 and self._crc != self._expected_crc:
            raise zipfile.BadZipFile("Bad CRC-32")
        return out

    def close(self) -> None:
        self._file.close()

    __del__ = close  # a split read only part way leaves its stream to the garbage collector


class NpyMember:
    """One ``.npy`` array inside an ``.npz`` (or a bare ``.npy``), read in row slices.

    Rows come back in the native byte order: a big-endian ``>u2`` array is
    read as ``uint16``, keeping its integer type and natural maximum.
    """

    def __init__(self, path: str, member: str | None):
        self.path = path
        self.member = member
        self.where = f"{path}:{member[:-4] if member and member.endswith('.npy') else member}" if member else path
        self._stream = None
        self._zip = None
        self._next_row = 0
        self._crc: tuple[int, int, int] | None = None  # (running crc, next row, expected crc)
        self._data_start: int | None = None  # where uncompressed array data starts in the file
        try:
            if member is None:
                with open(path, "rb") as f:
                    self.shape, self.fortran, self.stored_dtype, self._header_len = read_npy_header(f, self.where)
                self._check_data_size(os.path.getsize(path) - self._header_len)
                self._data_start = self._header_len
            else:
                with zipfile.ZipFile(path) as zf:
                    info = zf.getinfo(member)
                    with zf.open(info) as f:
                        self.shape, self.fortran, self.stored_dtype, self._header_len = read_npy_header(
                            f, self.where)
                self._check_data_size(info.file_size - self._header_len)
                self._info = info
                if info.compress_type == zipfile.ZIP_STORED:
                    member_start = _data_offset(path, info)
                    self._data_start = member_start + self._header_len
                    if not self.fortran:
                        # Direct reads bypass zipfile's CRC check, so front-to-back
                        # reads keep a running CRC, compared when the last row is read.
                        with open(path, "rb") as f:
                            f.seek(member_start)
                            self._crc = (zlib.crc32(f.read(self._header_len)), 0, info.CRC)
        except SourceError:
            raise
        except ZIP_ERRORS as e:
            raise SourceError(f"{self.where}: corrupt or unreadable array ({first_line(e)})") from None
        self.dtype = self.stored_dtype.newbyteorder("=")

    def _check_data_size(self, nbytes: int) -> None:
        """A header whose shape does not fit the stored bytes is corruption: refuse it
        before allocating anything of that shape."""
        want = int(np.prod(self.shape, dtype=object)) * self.stored_dtype.itemsize
        if want != nbytes:
            raise SourceError(f"{self.where}: header says shape {self.shape} of {self.stored_dtype} "
                              f"({want} bytes) but {nbytes} bytes are stored; the file is corrupt")

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def random_access(self) -> bool:
        return self._data_start is not None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array of the native byte order.

        One read at a time per member (a Dask worker may run tasks in threads):
        the stream and the running CRC are this object's state.
        """
        with _lock_of(self):
            out = self._read(start, stop)
        if out.dtype != self.dtype:
            out = out.byteswap().view(self.dtype)
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._data_start is not None:
            try:
                out = self._read_direct(start, stop)
            except OSError as e:
                raise SourceError(f"{self.where}: cannot read ({e})") from None
            if self._crc is not None and self._crc[1] == start:
                crc = zlib.crc32(out, self._crc[0])
                self._crc = (crc, stop, self._crc[2])
                if stop == len(self) and crc != self._crc[2]:
                    raise SourceError(f"{self.where}: corrupt array data (CRC mismatch); the file is damaged")
            return out
        if self.fortran:
            raise SourceError(f"{self.where}: a compressed Fortran-ordered array cannot be streamed; "
                              "re-save it with np.ascontiguousarray")
        try:
            return self._read_stream(start, stop)
        except ZIP_ERRORS as e:
            self._close_stream()
            raise SourceError(f"{self.where}: corrupt array data ({first_line(e)})") from None

    def _read_direct(self, start: int, stop: int) -> np.ndarray:
        """Rows of uncompressed data, read with plain file reads into a fresh array.

        Plain reads rather than a memory map: mapped pages would count in the
        process's resident memory for as long as the map lives, so a 20 GB
        array would look like 20 GB of RAM.
        """
        if self.fortran:  # column-major rows are not contiguous: map just for this
            m = np.memmap(self.path, self.stored_dtype, "r", offset=self._data_start, shape=self.shape, order="F")
            return np.array(m[start:stop])
        out = np.empty((stop - start,) + self.row_shape, self.stored_dtype)
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.stored_dtype.itemsize
        if out.nbytes:
            with open(self.path, "rb") as f:  # per batch: nothing left open between reads
                f.seek(self._data_start + start * row_bytes)
                if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                    raise SourceError(f"{self.where}: array data ends early; the file is truncated")
        return out

    def _read_stream(self, start: int, stop: int) -> np.ndarray:
        if self._stream is None or start < self._next_row:
            self._close_stream()
            self._open_stream()
            self._stream.read(self._header_len)
            self._next_row = 0
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.stored_dtype.itemsize
        if start > self._next_row:
            _skip(self._stream, (start - self._next_row) * row_bytes)
        out = np.empty((stop - start,) + self.row_shape, self.stored_dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = self._stream.readinto(view[got:])
            if not n:
                raise SourceError(f"{self.where}: array data ends early; the file is truncated")
            got += n
        self._next_row = stop
        if stop == len(self):
            if self._stream.read(1):  # reading to the end makes zipfile check the CRC
                raise SourceError(f"{self.where}: more data than the header's shape; the file is corrupt")
            self._close_stream()
        return out

    def _open_stream(self) -> None:
        info = self._info
        if info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 0x1:
            self._stream = _InflateStream(self.path, _data_offset(self.path, info), info.compress_size,
                                          info.file_size, info.CRC)
        else:  # other compression methods, encryption: zipfile knows (or refuses) them
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(self.member)

    def _close_stream(self):
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._stream = self._zip = None

    def load_all(self) -> np.ndarray:
        a = self.read(0, len(self))
        return a if self.shape else a.reshape(())

    def __getstate__(self):  # an open stream does not travel to another process
        state = dict(self.__dict__)
        state["_stream"] = state["_zip"] = None
        state["_next_row"] = 0
        state.pop("_lock", None)
        return state


_LOCKS_GUARD = threading.Lock()


def _lock_of(obj) -> threading.Lock:
    """The object's own lock, made on first use (locks do not pickle)."""
    lock = obj.__dict__.get("_lock")
    if lock is None:
        with _LOCKS_GUARD:
            lock = obj.__dict__.setdefault("_lock", threading.Lock())
    return lock


def read_labels(y: NpyMember, n_images: int, x_where: str) -> np.ndarray:
    """The labels of ``n_images`` images as int64 class indices, checked.

    Length, shape and dtype are checked from the header before anything is
    read: a small file whose header declares millions of labels is refused
    without allocating them. Integral floats are accepted as indices; one-hot
    rows, strings, NaN, fractions and negative values are refused.
    """
    shape, dtype = tuple(y.shape), y.dtype
    if len(shape) == 2 and shape[1] == 1:  # Keras' CIFAR labels are (N, 1)
        shape = shape[:1]
    if len(shape) == 2 and shape[1] > 1:
        raise SourceError(f"{y.where}: labels of shape {y.shape} look one-hot; imgnorm needs integer class "
                          "indices of shape (N,): save y.argmax(axis=1)")
    if len(shape) != 1:
        raise SourceError(f"{y.where}: labels of shape {y.shape}; expected integer class indices of shape (N,)")
    if shape[0] != n_images:
        raise SourceError(f"{y.where}: {shape[0]} labels for {n_images} images in {x_where}")
    if dtype.kind not in "uifb":
        what = "strings" if dtype.kind in "SU" else f"dtype {dtype}"
        raise SourceError(f"{y.where}: labels are {what}; imgnorm needs integer class indices 0..K-1")
    a = y.load_all().reshape(-1)
    if dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SourceError(f"{y.where}: label {i} is {float(a[i])!r}; labels must be integer class indices")
        frac = a != np.floor(a)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise SourceError(f"{y.where}: label {i} is {float(a[i])!r}, not a whole number; labels must be integer "
                              "class indices")
        if a.size and a.max() > np.iinfo(np.int64).max:
            raise SourceError(f"{y.where}: labels up to {float(a.max())!r} are not class indices")
    if a.size and a.min() < 0:
        i = int(np.argmin(a))
        raise SourceError(f"{y.where}: label {i} is {a[i].item()!r}; class indices must be 0 or more")
    return a.astype(np.int64) if dtype.kind in "fb" else a


def _skip(stream, nbytes: int):
    while nbytes > 0:
        chunk = stream.read(min(nbytes, 1 << 24))
        if not chunk:
            raise EOFError("unexpected end of data")
        nbytes -= len(chunk)


def read_npy_header(f, where: str):
    """``(shape, fortran_order, dtype, header_length)`` of a ``.npy`` stream; no pickles."""
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        raise SourceError(f"{where}: not a .npy array (bad magic number)") from None
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise SourceError(f"{where}: unsupported .npy version {version}")
    if dtype.hasobject or dtype.fields is not None:
        raise SourceError(f"{where}: holds Python objects (a pickle); imgnorm never unpickles. "
                          "Save the images as a numeric array")
    return shape, fortran, dtype, f.tell()


def _data_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Offset of a stored member's data: after its local header, name and extra field."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len
