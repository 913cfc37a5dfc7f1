"""Source readers: a folder of images, an ``.npz`` / ``.npy`` file, CIFAR batches, IDX files or one image.

``open_source(path)`` returns a :class:`Source` whose splits hand out images in
batches of their native dtype, never the whole dataset at once.  Folder rules
follow Keras' ``flow_from_directory``: class subfolders in sorted name order
become labels 0..K-1, files are found recursively by extension and listed in
sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ImageError, OptionError, SourceError, show_path
from .npz import NpyMember, npz_members, read_labels

COLORS = ("rgb", "gray", "keep")
# torchvision's ImageFolder list (Keras' plus .pgm and .webp)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
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
    index: np.ndarray | None = None  # the split's row of each image (None: start, start + 1, ...)

    def __len__(self) -> int:
        return len(self.images) if self.index is None else len(self.index)

    @property
    def rows(self) -> np.ndarray:
        """The split's row of each image of the batch."""
        return self.index if self.index is not None else np.arange(self.start, self.start + len(self.images))


class Split:
    """One split of a source: a sequence of images, read in batches."""

    name: str
    labels: np.ndarray | None = None  # (n_images,) integer labels, known before reading
    files: list[str] | None = None
    bgr: bool = False  # hand out RGB pixels in BGR order (--channel-order bgr)

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int, on_error: str = "fail", visit=None, keep: bool = True) -> Batch:
        """Read images ``start:stop`` as one :class:`Batch`.

        ``visit``, if given, is called as ``visit(images, rows)`` with the
        pixels as soon as they are read (one image at a time for folders),
        while they are still in the CPU cache, and their rows in the split:
        statistics computed there cost a fraction of a later pass.
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

    kind: str  # "folder", "image", "npz", "npy", "cifar10", "cifar100" or "idx"

    def __init__(self, path: str, splits: dict[str, Split], *, kind: str,
                 class_names: list[str] | None = None, color: str = "keep",
                 channels: int | None = None, dtype: np.dtype | None = None,
                 skipped: list[tuple[str, str]] | None = None, ignored: list[tuple[str, str]] | None = None):
        self.path = path
        self.kind = kind
        self.splits = splits
        self.class_names = class_names
        self.color = color
        self.channels = channels
        self.dtype = np.dtype(dtype) if dtype is not None else None
        # (path, reason): passed over while listing and worth reporting (a symlink
        # loop, an unreadable folder under --on-error skip), recorded in outputs
        self.skipped = skipped or []
        self.channel_order = "rgb"
        self.given_name: str | None = None
        # (path, reason): what the layout rules leave out (hidden, not an image)
        self.ignored = ignored or []

    @property
    def name(self) -> str:
        """The source as given (normalized, not made absolute), as documents and
        outputs record it: the same run gives the same bytes on any machine."""
        return self.given_name if self.given_name is not None else os.path.normpath(self.path)

    def stored_name(self, path: str) -> str:
        """An image file of this source as ``/files`` records it: relative to the
        source folder (join it with :attr:`name`), or the file's own name."""
        if self.kind == "folder":
            prefix = os.path.join(self.path, "")
            # the walker joins names onto the source path: a slice, where relpath
            # would ask the system for the working directory twice per file
            return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.path)
        return os.path.basename(path)

    def reached_name(self, stored: str) -> str:
        """The path of a file recorded by :meth:`stored_name`, as the source was given."""
        return os.path.join(self.path, stored) if self.kind == "folder" else self.path

    def digests(self) -> dict:
        """Per split, the number of files and a SHA-256 of their sorted names
        (relative to the source) with their sizes: which files the numbers
        came from, so that a document can be traced, and checked, later."""
        out = {}
        for name, split in self.splits.items():
            backing = getattr(split, "backing", None)  # the files an array split is read from
            if backing is not None:
                entries = sorted((os.fsencode(os.path.relpath(f, self.path) if os.path.isdir(self.path)
                                              else os.path.basename(f)), os.path.getsize(f)) for f in backing)
            elif split.files is not None:
                sizes = getattr(split, "sizes", None)
                if sizes is None:
                    sizes = [os.path.getsize(f) for f in split.files]
                entries = sorted((os.fsencode(self.stored_name(f)), int(n)) for f, n in zip(split.files, sizes))
            else:
                entries = [(os.fsencode(os.path.basename(self.path)), os.path.getsize(self.path))]
            h = hashlib.sha256()
            for rel, size in entries:
                h.update(rel + b"\t" + str(size).encode() + b"\n")
            out[name] = {"count": len(entries), "sha256": h.hexdigest()}
        return out

    def reading(self) -> dict:
        """How the pixels are read, as documents and HDF5 attributes record it."""
        split = next(iter(self.splits.values()), None)
        resize = getattr(split, "resize", None)
        out = {"color": self.color, "channel_order": self.channel_order, "size": None, "resize_mode": None,
               "interpolation": None, "pad_value": None, "draft": False}
        if resize is not None:
            out.update(resize.describe())
        return out

    @property
    def decodes(self) -> bool:
        """Whether reading decodes image files (worth worker processes), or reads arrays."""
        return self.kind in ("folder", "image")

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
                size: int | tuple[int, int] | None = None, resize_mode: str = "stretch",
                interpolation: str = "bilinear", pad_value: int = 0, draft: bool = False,
                channel_order: str = "rgb", on_error: str = "fail", name: str | None = None,
                label: str | None = None) -> Source:
    """Open a dataset for reading.

    Parameters
    ----------
    path : path-like
        A folder of images, an ``.npz`` / ``.npy`` file or one image file.
    color : {"rgb", "gray", "keep"}, optional
        For images; default ``rgb``.  Arrays are read as stored (``keep``).
    size : (width, height) or int, optional
        Bring every image to this size (an int: square) with Pillow's resize
        of the fully decoded image; arrays cannot be resized.
    resize_mode : {"stretch", "crop", "pad"}
        ``stretch`` to the size; ``crop``: scale to cover it, cut the centre
        (torchvision's ``Resize`` + ``CenterCrop``); ``pad``: scale to fit,
        pad around (letterbox) with ``pad_value``. See :class:`imgnorm.decode.Resize`.
    interpolation : {"bilinear", "nearest", "bicubic", "lanczos", "box", "hamming"}
        Pillow's filter (Keras' names; Keras' own default is nearest).
    draft : bool
        Shrink JPEGs by a power of two while decoding: faster, pixels slightly
        different from a full decode.
    channel_order : {"rgb", "bgr"}
        ``bgr`` hands out the three channels reversed (Caffe-style models);
        statistics computed on them follow.
    on_error : {"fail", "skip"}
        A folder or file that cannot be listed: stop, or leave it out and
        record it in :attr:`Source.skipped`.
    name : str, optional
        How documents and outputs record the source (default: ``path`` as
        given, normalized).
    label : {"fine", "coarse"}, optional
        CIFAR-100's labels: ``fine_labels`` (default, 100 classes) or
        ``coarse_labels`` (20 superclasses).

    Returns
    -------
    Source
        Named splits (``source.splits``), each reading images in batches:
        ``split.read(start, stop).images`` is an array of shape
        (n, height, width, channels) of uint8 or uint16 (float for float
        arrays), or a list of (height, width, channels) arrays when sizes differ.
    """
    path = os.fspath(path)
    if channel_order not in ("rgb", "bgr"):
        raise OptionError(f"channel order {channel_order!r} is not one of rgb, bgr", option="--channel-order")
    if label not in (None, "fine", "coarse"):
        raise OptionError(f"label {label!r} is not one of fine, coarse", option="--label")
    src = _open(path, color, size, resize_mode, interpolation, pad_value, draft, on_error, label)
    if label is not None and src.kind != "cifar100":
        raise OptionError(f"--label chooses CIFAR-100's fine or coarse labels; {path} is a {src.kind} source",
                          option="--label")
    _set_channel_order(src, channel_order)
    src.given_name = name
    return src


def _set_channel_order(src: Source, channel_order: str) -> None:
    if channel_order == "bgr":
        if src.channels != 3:
            raise OptionError(f"--channel-order bgr reverses three colour channels; {src.path} is read with "
                              f"{src.channels}", option="--channel-order")
        for split in src.splits.values():
            split.bgr = True
    src.channel_order = channel_order


def _open(path: str, color, size, resize_mode, interpolation, pad_value, draft, on_error, label=None) -> Source:
    resize = None
    if size is not None:
        from .decode import Resize
        size = (size, size) if isinstance(size, int) else tuple(size)
        resize = Resize(size, resize_mode, interpolation, pad_value, draft)
    elif draft or resize_mode != "stretch" or interpolation != "bilinear" or pad_value:
        raise OptionError("--resize-mode, --interpolation, --pad-value and --draft apply with --size",
                          option="--size")
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or folder")
    from .cifar import is_cifar_folder
    from .idx import parse_name
    if os.path.isdir(path):
        path = _cifar_child(path) or path
        idx_files = _idx_files(path)
        if is_cifar_folder(path) or idx_files:
            _arrays_only(path, resize)
            return _open_cifar(path, color, label) if is_cifar_folder(path) else _open_idx(path, idx_files, color)
        # Listed in a child process: the listing's transient objects (a few hundred
        # bytes a file) never become this process's heap, which every decoding
        # worker forked later would carry (and count) too.
        from .workers import in_child

        return in_child(_open_folder, path, check_color(color or "rgb"), resize, on_error)
    lower = path.lower()
    if lower.endswith(ARRAY_EXTENSIONS):
        _arrays_only(path, resize)
        return _open_array_file(path, color)
    parsed = parse_name(os.path.basename(path))
    if parsed is not None:
        if parsed[2] == "labels":
            raise SourceError(f"{show_path(path)}: an IDX labels file; point imgnorm at its images file "
                              "(or at the folder)")
        _arrays_only(path, resize)
        return _open_idx(path, _idx_files(os.path.dirname(path) or "."), color, only=path)
    if lower.endswith(IMAGE_EXTENSIONS):
        color = check_color(color or "rgb")
        split = FolderSplit("all", [path], None, color, resize)
        channels, dtype = _probe_pixels([path], color)
        split.pixels = (channels, dtype)
        return Source(path, {"all": split}, kind="image", color=color, channels=channels, dtype=dtype)
    raise SourceError(f"{path}: not a folder, an .npz/.npy file, an IDX images file or an image "
                      f"({', '.join(IMAGE_EXTENSIONS)})")


# ---------------------------------------------------------------- folders


class PathList(Sequence):
    """File paths held as one bytes buffer and an offsets array: a read-only list of str.

    A Python list of str costs ~150 bytes a path in every process that touches
    it (reference counts dirty the pages a forked worker shares), so a folder
    of millions of files would grow every worker by hundreds of MB; this is
    the paths' bytes once, shared by forked workers untouched.
    """

    def __init__(self, paths):
        raw = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(raw) + 1, np.int64)
        np.cumsum([len(b) for b in raw], out=self._offsets[1:])
        self._blob = b"".join(raw)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("path index out of range")
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]])

    def __eq__(self, other) -> bool:
        if isinstance(other, (PathList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __add__(self, other) -> list[str]:  # as a list would: a new list
        return list(self) + list(other)

    def __radd__(self, other) -> list[str]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths)"


class FolderSplit(Split):
    """Image files, decoded one by one with :func:`imgnorm.decode.decode`."""

    def __init__(self, name: str, files: list[str], labels: np.ndarray | None,
                 color: str, resize=None):
        self.name = name
        self.files = files if isinstance(files, PathList) else PathList(files)
        self.labels = labels
        self.color = color
        self.resize = resize  # imgnorm.decode.Resize or None
        self.pixels: tuple[int, np.dtype] | None = None  # (channels, dtype) every image must have

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) every image is resized to, or None."""
        return self.resize.size if self.resize is not None else None

    def read(self, start: int, stop: int, on_error: str = "fail", visit=None, keep: bool = True) -> Batch:
        from .decode import decode  # imported here: array sources never load Pillow
        images, kept, skipped = [], [], []
        for i in range(start, stop):
            try:
                a = decode(self.files[i], self.color, self.resize)
                if self.bgr:
                    a = np.ascontiguousarray(a[:, :, ::-1])
                if self.pixels is not None and (a.shape[2], a.dtype) != self.pixels:
                    c, t = self.pixels
                    if a.dtype != t:
                        raise ImageError(self.files[i], f"holds {a.dtype} pixels ({8 * a.dtype.itemsize}-bit), "
                                         f"but the first image holds {t} ({8 * t.itemsize}-bit); convert the "
                                         "images to one bit depth")
                    raise ImageError(self.files[i], f"has {a.shape[2]} channel(s), but the first image has {c}; "
                                     "read all alike with --color rgb or --color gray")
                if visit is not None:
                    visit([a], [i])
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
        return Batch(arr, labels, [self.files[i] for i in kept], start, skipped, np.asarray(kept, dtype=np.int64))


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class _Dir:
    path: str  # as reached from the source root: what file names and messages show
    real: str  # its real path, symlinks resolved


class _Walk:
    """Lists a source folder as its layout means it, following symlinks safely.

    A symlinked folder is followed unless it leads to one of its own
    ancestors (up to and above the source root) or back into the folders
    being walked: both would read images a second time under another split
    or class. Those are passed over and recorded in :attr:`skipped`; a folder
    or entry that cannot be read is an error, or with ``on_error="skip"``
    recorded there too. :attr:`ignored` holds what the layout rules pass
    over (hidden entries, files that are not images, loose files).
    """

    def __init__(self, on_error: str):
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def unreadable(self, path: str, e: OSError, what: str) -> None:
        reason = f"cannot read {what} ({e.strerror or e})"
        if self.on_error != "skip":
            raise SourceError(f"{show_path(path)}: {reason}; fix its permissions, or pass --on-error skip to "
                              "leave it out")
        self.skipped.append((path, reason))

    def root(self, path: str) -> _Dir:
        return _Dir(path, os.path.realpath(path))

    def entries(self, d: _Dir, chain: tuple[str, ...] = ()) -> tuple[list[tuple[str, int, int, int]], list[_Dir]]:
        """``(image files as (path, st_dev, st_ino, st_size), subfolders)`` of ``d``, each sorted by name.

        Only the file's identity is kept of its stat: a stat result takes some
        600 bytes, which for millions of files would outlive the listing in
        the process's heap (and in every worker forked from it).
        """
        try:
            with os.scandir(d.path) as it:
                listing = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.unreadable(d.path, e, "folder")
            return [], []
        files, dirs = [], []
        for entry in listing:
            if _is_hidden(entry.name):
                self.ignored.append((entry.path, "hidden"))
                continue
            try:
                st = entry.stat()  # follows symlinks
            except OSError as e:
                if entry.is_symlink() and not os.path.exists(entry.path):
                    if _is_image(entry.name):
                        self.unreadable(entry.path, e, "image (a broken symbolic link)")
                    else:
                        self.ignored.append((entry.path, "broken symbolic link"))
                else:
                    self.unreadable(entry.path, e, "entry")
                continue
            if stat.S_ISDIR(st.st_mode):
                sub = self._subfolder(d, entry, chain)
                if sub is not None:
                    dirs.append(sub)
            elif stat.S_ISREG(st.st_mode) and _is_image(entry.name):
                files.append((entry.path, st.st_dev, st.st_ino, st.st_size))
            else:
                self.ignored.append((entry.path, "not an image file"))
        return files, dirs

    def _subfolder(self, d: _Dir, entry: os.DirEntry, chain: tuple[str, ...]) -> _Dir | None:
        if not entry.is_symlink():
            return _Dir(entry.path, os.path.join(d.real, entry.name))
        real = os.path.realpath(entry.path)
        if _is_within(d.real, real):
            self.skipped.append((entry.path, f"symlink to its own ancestor folder {show_path(real)}, not followed"))
            return None
        if real in chain:
            self.skipped.append((entry.path, f"symlink loop back to {show_path(real)}, not followed"))
            return None
        return _Dir(entry.path, real)

    def images(self, d: _Dir, chain: tuple[str, ...] = ()) -> list[tuple[str, int, int, int]]:
        """Image files below ``d``, recursively; Keras' order: by folder path, then by file name."""
        chain = chain + (d.real,)
        files, dirs = self.entries(d, chain)
        out = files + [f for sub in dirs for f in self.images(sub, chain)]
        out.sort(key=lambda f: (os.path.dirname(f[0]), os.path.basename(f[0])))
        return out


def _open_folder(path: str, color: str, resize, on_error: str = "fail") -> Source:
    walk = _Walk(on_error)
    root = walk.root(path)
    loose, subdirs = walk.entries(root)
    split_dirs: dict[str, _Dir] = {}
    for d in subdirs:
        name = SPLIT_FOLDERS.get(os.path.basename(d.path).lower())
        if name is None:
            continue
        if name in split_dirs:
            raise SourceError(f"{show_path(path)}: both {os.path.basename(split_dirs[name].path)!r} and "
                              f"{os.path.basename(d.path)!r} would be split {name!r}; rename or remove one")
        split_dirs[name] = d
    if split_dirs:
        walk.ignored += [(f[0], "outside the split folders") for f in loose]
        walk.ignored += [(d.path, "outside the split folders") for d in subdirs if d not in split_dirs.values()]
        split_dirs = {k: split_dirs[k] for k in SPLIT_ORDER if k in split_dirs}
        listed = {name: walk.entries(d, (root.real,)) for name, d in split_dirs.items()}
    else:
        split_dirs = {"all": root}
        listed = {"all": (loose, subdirs)}

    # Classes: the union of every split's subfolders, so labels agree across splits.
    class_names = sorted({os.path.basename(d.path) for _, dirs in listed.values() for d in dirs})
    found: dict[str, np.ndarray] = {}
    splits: dict[str, Split] = {}
    for name, (files, dirs) in listed.items():
        chain = (root.real, split_dirs[name].real) if name != "all" else (root.real,)
        if class_names:
            walk.ignored += [(f[0], "not inside a class folder") for f in files]
            images, labels = [], []
            by_name = {os.path.basename(d.path): d for d in dirs}
            for k, cls in enumerate(class_names):
                if cls in by_name:
                    got = walk.images(by_name[cls], chain)
                    images += got
                    labels += [k] * len(got)
            lab = np.asarray(labels, dtype=np.int64)
        else:  # no subfolders anywhere: the images in the split folder itself, unlabelled
            images, lab = files, None
        # Compact each split as soon as it is listed: a tuple per file costs
        # some 250 bytes more than these arrays, for millions of files.
        found[name] = np.array([f[1:3] for f in images], dtype=np.uint64).reshape(-1, 2)
        splits[name] = FolderSplit(name, [f[0] for f in images], lab, color, resize)
        splits[name].sizes = np.array([f[3] for f in images], dtype=np.int64)
        del images
    _check_leakage(found, splits)
    n_images = sum(len(s) for s in splits.values())
    if n_images == 0:
        other = len(walk.ignored) + len(walk.skipped)
        raise SourceError(f"{show_path(path)}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
                          f"{'; ' + str(other) + ' other files skipped' if other else ''})")
    channels, dtype = _probe_pixels([f for s in splits.values() for f in s.files], color)
    for s in splits.values():
        s.pixels = (channels, dtype)
    return Source(path, splits, kind="folder", class_names=class_names or None, color=color,
                  channels=channels, dtype=dtype, skipped=walk.skipped, ignored=walk.ignored)


def _check_leakage(found: dict[str, np.ndarray], splits: dict[str, Split]) -> None:
    """Refuse one image file (one inode) reached from two splits: it would leak between them.

    ``found`` maps each split to its files' ``(st_dev, st_ino)``, shape (N, 2).
    """
    if len(found) < 2:
        return
    ids = np.concatenate(list(found.values()))
    dev, ino = ids[:, 0], ids[:, 1]
    split = np.repeat(np.arange(len(found)), [len(files) for files in found.values()])
    order = np.lexsort((split, ino, dev))
    d, i, s = dev[order], ino[order], split[order]
    clash = np.flatnonzero((d[1:] == d[:-1]) & (i[1:] == i[:-1]) & (s[1:] != s[:-1]))
    if clash.size:
        paths = [f for name in found for f in splits[name].files]
        a, b = order[clash[0]], order[clash[0] + 1]
        names = list(found)
        raise SourceError(f"{show_path(paths[a])} (split {names[split[a]]}) and {show_path(paths[b])} (split "
                          f"{names[split[b]]}) are the same file: an image in two splits leaks between them. "
                          "Remove one")


def _probe_pixels(files: list[str], color: str) -> tuple[int, np.dtype]:
    """Channels and dtype that decoding with ``color`` gives, from the first readable image.

    ``rgb`` and ``gray`` read only the header (16-bit images give uint16);
    ``keep`` decodes the image, whose channels only its pixels tell.
    """
    from .decode import decode, probe_dtype
    for path in files[:100]:
        try:
            if color in ("rgb", "gray"):
                return (3 if color == "rgb" else 1), probe_dtype(path)
            a = decode(path, color)
            return a.shape[2], a.dtype
        except ImageError:
            continue  # reading will report it (or skip it)
    return (1 if color == "gray" else 3), np.dtype(np.uint8)


# ---------------------------------------------------------------- arrays


class ArraySplit(Split):
    """Images from an array member, with labels from its ``y`` partner."""

    def __init__(self, name: str, x: NpyMember, labels: np.ndarray | None, add_channel: bool,
                 backing: list[str] | None = None):
        self.name = name
        self._x = x
        self.backing = backing
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
        return self._x.random_access

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
        if self.bgr:
            x = np.ascontiguousarray(x[..., ::-1])
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = start + int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0, 0])
            raise SourceError(f"{self._x.where}: image {bad} holds NaN or infinity; "
                              "clean the array before normalizing")
        if visit is not None:
            visit(x, range(start, stop))
        labels = self.labels[start:stop] if self.labels is not None else None
        return Batch(x, labels, None, start)


def _array_pairs(path: str) -> dict[str, tuple[str, str | None]]:
    """Split name -> (x member, y member or None) of an ``.npz``, in split order."""
    keys = npz_members(path)
    pairs: dict[str, tuple[str, str | None]] = {}
    for k in sorted(keys):
        if k.startswith("x_") and len(k) > 2:
            pairs[k[2:]] = (keys[k], keys.get("y_" + k[2:]))
    if not pairs and "x" in keys:
        pairs["all"] = (keys["x"], keys.get("y"))
    if not pairs and len(keys) == 1:
        pairs["all"] = (next(iter(keys.values())), None)
    if not pairs:
        found = ", ".join(sorted(keys)) or "nothing"
        raise SourceError(f"{path}: no image arrays (expected x_train/x_test, x, or one array; found {found})")
    order = [s for s in SPLIT_ORDER if s in pairs] + sorted(s for s in pairs if s not in SPLIT_ORDER)
    return {s: pairs[s] for s in order}


def _image_layout(x: NpyMember) -> tuple[bool, int]:
    """``(add_channel, channels)`` of an image array, checked from its header."""
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise SourceError(f"{x.where}: dtype {x.stored_dtype} is not a pixel type (integers or floats)")
    if len(x.shape) == 3:
        add_channel, channels = True, 1
    elif len(x.shape) == 4 and 1 <= x.shape[3] <= 4:
        add_channel, channels = False, x.shape[3]
    elif len(x.shape) == 4:
        raise SourceError(f"{x.where}: shape {x.shape} has {x.shape[3]} channels last; imgnorm expects "
                          "(N, H, W) or (N, H, W, C) with C <= 4 (transpose channels-first data)")
    else:
        raise SourceError(f"{x.where}: shape {x.shape} is not (N, H, W) or (N, H, W, C)")
    if len(x) == 0:
        raise SourceError(f"{x.where}: holds no images (shape {x.shape}); remove the empty array")
    if 0 in x.shape[1:3]:
        raise SourceError(f"{x.where}: images of {x.shape[2]}x{x.shape[1]} pixels (shape {x.shape}) hold no "
                          "pixels; save images of at least 1x1")
    return add_channel, channels


def _open_array_file(path: str, color: str | None) -> Source:
    if path.lower().endswith(".npy"):
        members = {"all": (NpyMember(path, None), None)}
        kind = "npy"
    else:
        members = {s: (NpyMember(path, x), y) for s, (x, y) in _array_pairs(path).items()}
        kind = "npz"
    splits: dict[str, Split] = {}
    dtype = channels = None
    for name, (x, y_member) in members.items():
        add_channel, ch = _image_layout(x)
        if dtype is not None and (x.dtype != dtype or ch != channels):
            raise SourceError(f"{x.where}: dtype {x.dtype} with {ch} channels differs from the other "
                              f"splits' {dtype} with {channels}")
        dtype, channels = x.dtype, ch
        labels = read_labels(NpyMember(path, y_member), len(x), x.where) if y_member is not None else None
        splits[name] = ArraySplit(name, x, labels, add_channel)
    _check_array_color(path, color, channels)
    return Source(path, splits, kind=kind, color="keep", channels=channels, dtype=dtype)


# ---------------------------------------------------------------- CIFAR and IDX


def _arrays_only(path: str, resize) -> None:
    if resize is not None:
        raise OptionError(f"{path}: --size resizes image files; arrays are read as stored", option="--size")


def _check_array_color(path: str, color: str | None, channels: int) -> None:
    if color not in (None, "keep"):
        want = {"rgb": 3, "gray": 1}[check_color(color)]
        if want != channels:
            raise OptionError(f"{path}: arrays have {channels} channel(s); --color {color} cannot change "
                              "stored arrays, use --color keep", option="--color")


def _open_cifar(path: str, color: str | None, label: str | None) -> Source:
    """A ``cifar-10-batches-py`` or ``cifar-100-python`` folder: splits train and test."""
    from .cifar import CifarBatches, batch_files, class_names
    kind, files, meta = batch_files(path)
    if not files:
        raise SourceError(f"{show_path(path)}: a CIFAR folder without data_batch_N or test_batch files")
    coarse = label == "coarse"
    key = "labels" if kind == "cifar10" else ("coarse_labels" if coarse else "fine_labels")
    names_key = "label_names" if kind == "cifar10" else ("coarse_label_names" if coarse else "fine_label_names")
    splits: dict[str, Split] = {}
    for name, batch_list in files.items():
        x = CifarBatches(batch_list, key)
        splits[name] = ArraySplit(name, x, x.labels, add_channel=False, backing=batch_list)
    names = class_names(meta, names_key)
    top = max(int(s.labels.max()) for s in splits.values() if len(s.labels))
    if names is not None and top >= len(names):
        raise SourceError(f"{show_path(meta)}: {len(names)} class names, but the batches hold label {top}")
    _check_array_color(path, color, 3)
    ignored = [(os.path.join(path, n), "not a CIFAR batch") for n in sorted(os.listdir(path))
               if os.path.join(path, n) not in {f for fl in files.values() for f in fl} | {meta}]
    return Source(path, splits, kind=kind, class_names=names, color="keep", channels=3, dtype=np.uint8,
                  ignored=ignored)


CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")


def _cifar_child(folder: str) -> str | None:
    """The CIFAR folder inside ``folder``, as torchvision's ``root`` holds it, or None."""
    from .cifar import is_cifar_folder
    found = [os.path.join(folder, n) for n in CIFAR_FOLDERS if is_cifar_folder(os.path.join(folder, n))]
    if len(found) > 1:
        raise SourceError(f"{show_path(folder)} holds both {' and '.join(CIFAR_FOLDERS)}; point imgnorm at one")
    return found[0] if found else None


def _idx_files(folder: str) -> list[str]:
    """The IDX files (images and labels) directly in ``folder``."""
    from .idx import parse_name
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names
            if parse_name(n) is not None and os.path.isfile(os.path.join(folder, n))]


def _open_idx(path: str, files: list[str], color: str | None, only: str | None = None) -> Source:
    """A folder of IDX files, or one IDX images file (``only``) with its labels file beside it."""
    from .idx import IdxArray, idx_pairs
    pairs = idx_pairs(files if only is None or only in files else files + [only], show_path(path), only)
    if not pairs:
        raise SourceError(f"{show_path(path)}: IDX labels but no IDX images file (*-images-idx3-ubyte[.gz])")
    order = [s for s in SPLIT_ORDER if s in pairs] + sorted(s for s in pairs if s not in SPLIT_ORDER)
    splits: dict[str, Split] = {}
    dtype = channels = None
    for name in order:
        x_path, y_path = pairs[name]
        x = IdxArray(x_path)
        add_channel, ch = _image_layout(x)
        if dtype is not None and (x.dtype != dtype or ch != channels):
            raise SourceError(f"{x.where}: {x.dtype} with {ch} channels differs from the other splits' "
                              f"{dtype} with {channels}")
        dtype, channels = x.dtype, ch
        labels = read_labels(IdxArray(y_path), len(x), x.where) if y_path is not None else None
        splits[name] = ArraySplit(name, x, labels, add_channel,
                                  backing=[x_path] + ([y_path] if y_path is not None else []))
    _check_array_color(path, color, channels)
    used = {f for pair in pairs.values() for f in pair if f is not None}
    ignored = [(f, "IDX file without a partner") for f in files if f not in used] if only is None else []
    return Source(path, splits, kind="idx", color="keep", channels=channels, dtype=dtype, ignored=ignored)
