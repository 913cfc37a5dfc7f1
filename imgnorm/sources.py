"""Source readers: a folder of images, an ``.npz`` / ``.npy`` file or one image.

``open_source(path)`` returns a :class:`Source` whose splits hand out images in
batches of their native dtype, never the whole dataset at once.  Folder rules
follow Keras' ``flow_from_directory``: class subfolders in sorted name order
become labels 0..K-1, files are found recursively by extension and listed in
sorted order.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ImageError, OptionError, SourceError

COLORS = ("rgb", "gray", "keep")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff")
ARRAY_EXTENSIONS = (".npz", ".npy")
# Top-level folder name (any case) -> split name.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
MAX_VALUES = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


@dataclass
class Batch:
    """Consecutive images of one split.

    ``images`` is an ndarray of shape (n, height, width, channels) when the
    images share a size, else a list of (height, width, channels) arrays.
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | None = None
    files: list[str] | None = None
    start: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


class Split:
    """One split of a source: a sequence of images, read in batches."""

    name: str
    labels: np.ndarray | None = None  # (n_images,) integer labels, known before reading
    files: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int, on_error: str = "fail", visit=None, keep: bool = True) -> Batch:
        """Read images ``start:stop`` as one :class:`Batch`.

        ``visit``, if given, is called with the pixels as soon as they are
        read (one image at a time for folders), while they are still in the
        CPU cache: statistics computed there cost a fraction of a later pass.
        With ``keep=False`` the batch carries no pixels (only labels, files and
        skipped), so each decoded image's memory is reused by the next.
        """
        raise NotImplementedError

    def batches(self, batch_size: int, on_error: str = "fail") -> Iterator[Batch]:
        """Yield the split in order, ``batch_size`` images at a time."""
        for start in range(0, len(self), batch_size):
            yield self.read(start, min(start + batch_size, len(self)), on_error)

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) when known to be shared by every image without reading."""
        return None

    @property
    def random_access(self) -> bool:
        """True when reading again costs no decoding or decompression."""
        return False

    @property
    def keep_between_passes(self) -> bool:
        """True when the pixels are worth keeping from the statistics pass to the
        writing pass: reading them again costs more than holding them."""
        return not self.random_access


class Source:
    """A dataset: named splits plus what is known about its pixels."""

    kind: str  # "folder", "npz", "npy" or "image"

    def __init__(self, path: str, splits: dict[str, Split], *, kind: str,
                 class_names: list[str] | None = None, color: str = "keep",
                 channels: int | None = None, dtype: np.dtype | None = None,
                 skipped: list[tuple[str, str]] | None = None):
        self.path = path
        self.kind = kind
        self.splits = splits
        self.class_names = class_names
        self.color = color
        self.channels = channels
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.skipped = skipped or []  # (file, reason) of files passed over while listing

    @property
    def max_value(self) -> int | None:
        """The largest value the pixel type can hold, or None for float pixels."""
        return MAX_VALUES.get(self.dtype) if self.dtype is not None else None

    @property
    def fit_split(self) -> str:
        """``train`` when there is such a split, else the first one."""
        return "train" if "train" in self.splits else next(iter(self.splits))

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise OptionError(f"{self.path} has no split {name!r}; it has {', '.join(self.splits)}",
                              option="--split")
        return self.splits[name]

    def __repr__(self) -> str:
        return f"<Source {self.kind} {self.path!r} splits={ {k: len(v) for k, v in self.splits.items()} }>"


def check_color(color: str) -> str:
    if color not in COLORS:
        raise OptionError(f"color {color!r} is not one of {', '.join(COLORS)}", option="--color")
    return color


def open_source(path: str | os.PathLike, *, color: str | None = None,
                size: tuple[int, int] | None = None) -> Source:
    """Open a dataset for reading.

    Parameters
    ----------
    path : path-like
        A folder of images, an ``.npz`` / ``.npy`` file or one image file.
    color : {"rgb", "gray", "keep"}, optional
        For images; default ``rgb``.  Arrays are read as stored (``keep``).
    size : (width, height), optional
        Resize images to this size; arrays cannot be resized.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        return _open_folder(path, check_color(color or "rgb"), size)
    lower = path.lower()
    if lower.endswith(ARRAY_EXTENSIONS):
        if size is not None:
            raise OptionError(f"{path}: --size resizes image files; arrays are read as stored", option="--size")
        return _open_array_file(path, color)
    if lower.endswith(IMAGE_EXTENSIONS):
        color = check_color(color or "rgb")
        split = FolderSplit("all", [path], None, color, size)
        channels, dtype = _probe_pixels([path], color)
        split.pixels = (channels, dtype)
        return Source(path, {"all": split}, kind="image", color=color, channels=channels, dtype=dtype)
    raise SourceError(f"{path}: not a folder, an .npz/.npy file or an image "
                      f"({', '.join(IMAGE_EXTENSIONS)})")


# ---------------------------------------------------------------- folders


class FolderSplit(Split):
    """Image files, decoded one by one with :func:`imgnorm.decode.decode`."""

    def __init__(self, name: str, files: list[str], labels: np.ndarray | None,
                 color: str, size: tuple[int, int] | None):
        self.name = name
        self.files = files
        self.labels = labels
        self.color = color
        self.size = size
        self.pixels: tuple[int, np.dtype] | None = None  # (channels, dtype) every image must have

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int, on_error: str = "fail", visit=None, keep: bool = True) -> Batch:
        from .decode import decode  # imported here: array sources never load Pillow
        images, kept, skipped = [], [], []
        for i in range(start, stop):
            try:
                a = decode(self.files[i], self.color, self.size)
                if self.pixels is not None and (a.shape[2], a.dtype) != self.pixels:
                    c, t = self.pixels
                    raise ImageError(self.files[i], f"has {a.shape[2]} channel(s) of {a.dtype}, but the first "
                                     f"image has {c} of {t}; read all alike with --color rgb or --color gray")
                if visit is not None:
                    visit([a])
                if keep:
                    images.append(a)
                kept.append(i)
            except ImageError as e:
                if on_error != "skip":
                    raise
                skipped.append((self.files[i], e.reason))
        if images and all(a.shape == images[0].shape for a in images) and all(
                a.dtype == images[0].dtype for a in images):
            arr: np.ndarray | list[np.ndarray] = np.stack(images)
        else:
            arr = images
        labels = self.labels[kept] if self.labels is not None else None
        return Batch(arr, labels, [self.files[i] for i in kept], start, skipped)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(folder: str, skipped: list[tuple[str, str]], _ancestors: frozenset = frozenset()) -> list[str]:
    """Image files below ``folder``, recursively, following links without looping.

    Sorted as Keras sorts them: by folder path, then by file name.
    """
    try:
        st = os.stat(folder)
    except OSError as e:
        skipped.append((folder, f"cannot read folder ({e.strerror})"))
        return []
    key = (st.st_dev, st.st_ino)
    if key in _ancestors:
        skipped.append((folder, "symlink loop, not followed"))
        return []
    ancestors = _ancestors | {key}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        skipped.append((folder, f"cannot read folder ({e.strerror})"))
        return []
    files, subdirs = [], []
    for entry in entries:
        if _is_hidden(entry.name):
            skipped.append((entry.path, "hidden"))
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            subdirs.append(entry.path)
        elif _is_image(entry.name) and _is_file(entry):
            files.append(entry.path)
        else:
            skipped.append((entry.path, "not an image file"))
    out = files + [f for d in subdirs for f in _scan(d, skipped, ancestors)]
    # Keras walks with os.walk and sorts by folder path, then files by name.
    out.sort(key=lambda p: (os.path.dirname(p), os.path.basename(p)))
    return out


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return stat.S_ISREG(entry.stat().st_mode)
    except OSError:
        return False  # a dangling link


def _subfolders(folder: str) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if not _is_hidden(e.name) and e.is_dir()),
                  key=lambda e: e.name)


def _open_folder(path: str, color: str, size: tuple[int, int] | None) -> Source:
    skipped: list[tuple[str, str]] = []
    split_dirs: dict[str, str] = {}
    for entry in _subfolders(path):
        name = SPLIT_FOLDERS.get(entry.name.lower())
        if name is None:
            continue
        if name in split_dirs:
            raise SourceError(f"{path}: both {os.path.basename(split_dirs[name])!r} and {entry.name!r} "
                              f"would be split {name!r}; rename or remove one")
        split_dirs[name] = entry.path
    if split_dirs:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.path not in split_dirs.values():
                skipped.append((entry.path, "outside the split folders"))
        split_dirs = {k: split_dirs[k] for k in SPLIT_ORDER if k in split_dirs}
    else:
        split_dirs = {"all": path}

    # Classes: the union of every split's subfolders, so labels agree across splits.
    per_split_classes = {name: [e.name for e in _subfolders(d)] for name, d in split_dirs.items()}
    class_names = sorted(set().union(*per_split_classes.values()))
    splits: dict[str, Split] = {}
    for name, folder in split_dirs.items():
        if class_names:
            files, labels = [], []
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if not _is_hidden(entry.name) and not entry.is_dir():
                    skipped.append((entry.path, "not inside a class folder"))
            for k, cls in enumerate(class_names):
                d = os.path.join(folder, cls)
                if os.path.isdir(d):
                    found = _scan(d, skipped)
                    files.extend(found)
                    labels.extend([k] * len(found))
            splits[name] = FolderSplit(name, files, np.asarray(labels, dtype=np.int64), color, size)
        else:
            splits[name] = FolderSplit(name, _scan(folder, skipped), None, color, size)
    n_images = sum(len(s) for s in splits.values())
    if n_images == 0:
        raise SourceError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
                          f"{'; ' + str(len(skipped)) + ' other files skipped' if skipped else ''})")
    channels, dtype = _probe_pixels([f for s in splits.values() for f in s.files], color)
    for s in splits.values():
        s.pixels = (channels, dtype)
    return Source(path, splits, kind="folder", class_names=class_names or None, color=color,
                  channels=channels, dtype=dtype, skipped=skipped)


def _probe_pixels(files: list[str], color: str) -> tuple[int, np.dtype]:
    """Channels and dtype that decoding with ``color`` gives, from the first readable image."""
    if color == "rgb":
        return 3, np.dtype(np.uint8)
    from .decode import decode
    for path in files[:100]:
        try:
            a = decode(path, color)
            return a.shape[2], a.dtype
        except ImageError:
            continue  # reading will report it (or skip it)
    return (1 if color == "gray" else 3), np.dtype(np.uint8)


# ---------------------------------------------------------------- arrays


# What zipfile, zlib and numpy's header parser raise on damaged files: an
# unsupported or garbled compression method (NotImplementedError), an
# "encrypted" flag bit (RuntimeError), bad deflate data (zlib.error), bad
# header text (ValueError, SyntaxError), cut-off data (EOFError).
try:  # ISA-L's inflate: the same output as zlib's, about twice as fast
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover
    _inflate = zlib


_ZIP_ERRORS = (_inflate.error, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, SyntaxError, struct.error,
               zlib.error, NotImplementedError, RuntimeError, KeyError, OverflowError, MemoryError, TypeError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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


class _NpyMember:
    """One ``.npy`` array inside an ``.npz`` (or a bare ``.npy``), read in row slices.

    Stored (uncompressed) members are read directly at any row; deflated
    members are streamed through ``zipfile`` and decompressed front to back.
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
                    self.shape, self.fortran, self.dtype, self._header_len = _read_npy_header(f, self.where)
                _check_data_size(self, os.path.getsize(path) - self._header_len)
                self._data_start = self._header_len
            else:
                with zipfile.ZipFile(path) as zf:
                    info = zf.getinfo(member)
                    with zf.open(info) as f:
                        self.shape, self.fortran, self.dtype, self._header_len = _read_npy_header(f, self.where)
                _check_data_size(self, info.file_size - self._header_len)
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
        except _ZIP_ERRORS as e:
            raise SourceError(f"{self.where}: corrupt or unreadable array ({_first_line(e)})") from None

    def _read_direct(self, start: int, stop: int) -> np.ndarray:
        """Rows of uncompressed data, read with plain file reads into a fresh array.

        Plain reads rather than a memory map: mapped pages would count in the
        process's resident memory for as long as the map lives, so a 20 GB
        array would look like 20 GB of RAM.
        """
        if self.fortran:  # column-major rows are not contiguous: map just for this
            m = np.memmap(self.path, self.dtype, "r", offset=self._data_start, shape=self.shape, order="F")
            return np.array(m[start:stop])
        out = np.empty((stop - start,) + self.row_shape, self.dtype)
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        if out.nbytes:
            with open(self.path, "rb") as f:  # per batch: nothing left open between reads
                f.seek(self._data_start + start * row_bytes)
                if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                    raise SourceError(f"{self.where}: array data ends early; the file is truncated")
        return out

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array."""
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
            if self._stream is None or start < self._next_row:
                self._close_stream()
                self._open_stream()
                self._stream.read(self._header_len)
                self._next_row = 0
            row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
            if start > self._next_row:
                _skip(self._stream, (start - self._next_row) * row_bytes)
            out = np.empty((stop - start,) + self.row_shape, self.dtype)
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
        except _ZIP_ERRORS as e:
            self._close_stream()
            raise SourceError(f"{self.where}: corrupt array data ({_first_line(e)})") from None

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
        return self.read(0, len(self)) if self.shape else self._read_direct(0, 1).reshape(())


def _check_data_size(member: "_NpyMember", nbytes: int) -> None:
    """A header whose shape does not fit the stored bytes is corruption: refuse it
    before allocating anything of that shape."""
    want = int(np.prod(member.shape, dtype=object)) * member.dtype.itemsize
    if want != nbytes:
        raise SourceError(f"{member.where}: header says shape {member.shape} of {member.dtype} "
                          f"({want} bytes) but {nbytes} bytes are stored; the file is corrupt")


def _skip(stream, nbytes: int):
    while nbytes > 0:
        chunk = stream.read(min(nbytes, 1 << 24))
        if not chunk:
            raise EOFError("unexpected end of data")
        nbytes -= len(chunk)


def _read_npy_header(f, where: str):
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


class ArraySplit(Split):
    """Images from an array member, with labels from its ``y`` partner."""

    def __init__(self, name: str, x: _NpyMember, labels: np.ndarray | None, add_channel: bool):
        self.name = name
        self._x = x
        self.labels = labels
        self.files = None
        self._add_channel = add_channel

    def __len__(self) -> int:
        return len(self._x)

    @property
    def where(self) -> str:
        return self._x.where

    @property
    def random_access(self) -> bool:
        return self._x._data_start is not None

    @property
    def keep_between_passes(self) -> bool:
        # Inflating a member again (~1 GB/s with ISA-L) runs in the writer's
        # read-ahead thread, beside the HDF5 writes; holding it would put the
        # whole member in memory (or in a file) and touch every page twice.
        return False

    @property
    def shape(self):
        s = self._x.row_shape
        return s + (1,) if self._add_channel else s

    def read(self, start: int, stop: int, on_error: str = "fail", visit=None, keep: bool = True) -> Batch:
        x = self._x.read(start, stop)
        if self._add_channel:
            x = x[..., None]
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = start + int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0, 0])
            raise SourceError(f"{self._x.where}: image {bad} holds NaN or infinity; "
                              "clean the array before normalizing")
        if visit is not None:
            visit(x)
        labels = self.labels[start:stop] if self.labels is not None else None
        return Batch(x, labels, None, start)


def _open_array_file(path: str, color: str | None) -> Source:
    if path.lower().endswith(".npy"):
        members = {"all": (_NpyMember(path, None), None)}
        kind = "npy"
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".npy")]
        except _ZIP_ERRORS as e:
            raise SourceError(f"{path}: not a valid .npz file ({_first_line(e)})") from None
        keys = {n[:-4]: n for n in names}
        pairs: dict[str, tuple[str, str | None]] = {}
        for k in sorted(keys):
            if k.startswith("x_") and len(k) > 2:
                split = k[2:]
                pairs[split] = (keys[k], keys.get("y_" + split))
        if not pairs and "x" in keys:
            pairs["all"] = (keys["x"], keys.get("y"))
        if not pairs and len(keys) == 1:
            pairs["all"] = (next(iter(keys.values())), None)
        if not pairs:
            found = ", ".join(sorted(keys)) or "nothing"
            raise SourceError(f"{path}: no image arrays (expected x_train/x_test, x, or one array; "
                              f"found {found})")
        order = [s for s in SPLIT_ORDER if s in pairs] + sorted(s for s in pairs if s not in SPLIT_ORDER)
        members = {s: (_NpyMember(path, pairs[s][0]), pairs[s][1]) for s in order}
        kind = "npz"

    splits: dict[str, Split] = {}
    dtype = channels = None
    for name, (x, y_member) in members.items():
        if x.dtype.kind not in "uif" and x.dtype != np.bool_:
            raise SourceError(f"{x.where}: dtype {x.dtype} is not a pixel type (integers or floats)")
        if len(x.shape) == 3:
            add_channel, ch = True, 1
        elif len(x.shape) == 4 and 1 <= x.shape[3] <= 4:
            add_channel, ch = False, x.shape[3]
        elif len(x.shape) == 4:
            raise SourceError(f"{x.where}: shape {x.shape} has {x.shape[3]} channels last; "
                              "imgnorm expects (N, H, W) or (N, H, W, C) with C <= 4 "
                              "(transpose channels-first data)")
        else:
            raise SourceError(f"{x.where}: shape {x.shape} is not (N, H, W) or (N, H, W, C)")
        if len(x) == 0:
            raise SourceError(f"{x.where}: holds no images (shape {x.shape}); remove the empty array")
        if dtype is not None and (x.dtype != dtype or ch != channels):
            raise SourceError(f"{x.where}: dtype {x.dtype} with {ch} channels differs from the other "
                              f"splits' {dtype} with {channels}")
        dtype, channels = x.dtype, ch
        labels = None
        if y_member is not None:
            y = _NpyMember(path, y_member)
            labels = y.load_all()
            if len(labels) != len(x):
                raise SourceError(f"{y.where}: {len(labels)} labels for {len(x)} images in {x.where}")
        splits[name] = ArraySplit(name, x, labels, add_channel)
    if color not in (None, "keep"):
        want = {"rgb": 3, "gray": 1}[check_color(color)]
        if want != channels:
            raise OptionError(f"{path}: arrays have {channels} channel(s); --color {color} cannot change "
                              "stored arrays, use --color keep", option="--color")
    return Source(path, splits, kind=kind, color="keep", channels=channels, dtype=dtype)
