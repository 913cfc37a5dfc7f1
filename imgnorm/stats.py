"""Running pixel statistics and the stats document (JSON).

Integer pixels of up to 16 bits are summed exactly: per batch in int64, across
batches in Python integers, so the totals do not depend on batch size, worker
count or order, and mean and variance are rounded once, from exact integer
ratios.  Float pixels (and wider integers) are merged with the pairwise update
of Chan, Golub and LeVeque, which stays accurate when the data sit on a large
offset, where the textbook ``E[x^2] - E[x]^2`` loses every digit.
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import numpy as np

from .errors import StatsFileError

FORMAT = "imgnorm.stats"
VERSION = 1


def _exact_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "uib" and dtype.itemsize <= 2


class RunningStats:
    """Count, min, max, mean and variance per channel, updated batch by batch.

    Parameters
    ----------
    channels : int
        Number of channels (the last axis of every image).
    dtype : numpy dtype
        Pixel type; integers of up to 16 bits are accumulated exactly.

    Attributes
    ----------
    images_ : int
        Images seen.
    count_ : int
        Pixels seen per channel (pixels = height * width, summed over images).
    shape_ : tuple (height, width, channels) or None
        The shared image shape, or None once two sizes have been seen.
    """

    def __init__(self, channels: int, dtype):
        self.channels = int(channels)
        self.dtype = np.dtype(dtype)
        self.exact = _exact_dtype(self.dtype)
        self.images_ = 0
        self.count_ = 0
        self.shape_: tuple[int, ...] | None = None
        self._shape_seen = False
        self.min_ = np.full(self.channels, np.inf)
        self.max_ = np.full(self.channels, -np.inf)
        if self.exact:
            self.sum_ = [0] * self.channels  # exact Python integers
            self.sum_sq_ = [0] * self.channels
        else:
            # Float data are shifted by their first value per channel, so that
            # the running mean and the merge deltas are of the order of the
            # spread of the data, not of its offset.
            self.shift_ = np.zeros(self.channels)
            self._mean = np.zeros(self.channels)  # mean of (x - shift_)
            self.m2_ = np.zeros(self.channels)  # sum of squared deviations from the mean

    # ---------------------------------------------------------------- update

    def update(self, images) -> "RunningStats":
        """Add a batch: an array (n, height, width, channels) or a list of (height, width, channels)."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise ValueError(f"expected (n, height, width, channels), got shape {images.shape}")
            if len(images):
                self._add_shape(images.shape[1:])
                self._add_pixels(images.reshape(-1, images.shape[-1]), len(images))
        else:
            for a in images:
                self._add_shape(a.shape)
                self._add_pixels(a.reshape(-1, a.shape[-1]), 1)
        return self

    def _add_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        if shape[-1] != self.channels:
            raise ValueError(f"image has {shape[-1]} channels, expected {self.channels}")
        if not self._shape_seen:
            self.shape_, self._shape_seen = shape, True
        elif self.shape_ != shape:
            self.shape_ = None

    def _add_pixels(self, x: np.ndarray, n_images: int):
        """x: (pixels, channels)."""
        if x.dtype != self.dtype:
            raise ValueError(f"pixels are {x.dtype}, expected {self.dtype}")
        n = x.shape[0]
        self.images_ += n_images
        if n == 0:
            return
        if self.exact:
            s, q, lo, hi = integer_channel_stats(x)
            self.sum_ = [a + b for a, b in zip(self.sum_, s)]
            self.sum_sq_ = [a + b for a, b in zip(self.sum_sq_, q)]
            self.count_ += n
        else:
            lo, hi = x.min(axis=0), x.max(axis=0)
            if self.count_ == 0:
                self.shift_ = x[0].astype(np.float64)
            xf = x.astype(np.float64) - self.shift_
            new_mean = xf.mean(axis=0)
            new_m2 = ((xf - new_mean) ** 2).sum(axis=0)
            self._chan_merge(n, new_mean, new_m2)
        self.min_ = np.minimum(self.min_, lo)
        self.max_ = np.maximum(self.max_, hi)

    def _chan_merge(self, new_n: int, new_mean: np.ndarray, new_m2: np.ndarray):
        # Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise
        # algorithm for computing sample variances", eq. 2.1b.
        last_n = self.count_
        updated_n = last_n + new_n
        delta = new_mean - self._mean
        self._mean = self._mean + delta * (new_n / updated_n)
        self.m2_ = self.m2_ + new_m2 + delta * delta * (last_n * new_n / updated_n)
        self.count_ = updated_n

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold in the statistics of disjoint data (another batch, worker or file)."""
        if (other.channels, other.exact) != (self.channels, self.exact):
            raise ValueError("cannot merge statistics of different channel counts or pixel types")
        if other.images_ == 0:
            return self
        if not self._shape_seen:
            self.shape_, self._shape_seen = other.shape_, other._shape_seen
        elif other._shape_seen and other.shape_ != self.shape_:
            self.shape_ = None
        self.images_ += other.images_
        self.min_ = np.minimum(self.min_, other.min_)
        self.max_ = np.maximum(self.max_, other.max_)
        if self.exact:
            self.sum_ = [a + b for a, b in zip(self.sum_, other.sum_)]
            self.sum_sq_ = [a + b for a, b in zip(self.sum_sq_, other.sum_sq_)]
            self.count_ += other.count_
        elif other.count_:
            if self.count_ == 0:
                self.shift_ = other.shift_.copy()
            # other's mean in this object's shifted coordinates; the shift
            # difference is exact when the two shifts are close.
            self._chan_merge(other.count_, (other.shift_ - self.shift_) + other._mean, other.m2_)
        return self

    # ---------------------------------------------------------------- results

    @property
    def mean_(self) -> np.ndarray:
        """Per-channel mean, shape (channels,)."""
        if self.exact:
            return np.array([_ratio(s, self.count_) for s in self.sum_])
        return self.shift_ + self._mean if self.count_ else np.full(self.channels, np.nan)

    @property
    def var_(self) -> np.ndarray:
        """Per-channel population variance (ddof=0), shape (channels,)."""
        if self.exact:
            return np.array([_exact_var(s, q, self.count_) for s, q in zip(self.sum_, self.sum_sq_)])
        return self.m2_ / self.count_ if self.count_ else np.full(self.channels, np.nan)

    @property
    def std_(self) -> np.ndarray:
        return np.sqrt(self.var_)

    def global_stats(self) -> dict:
        """Statistics of all channels pooled together."""
        n = self.count_ * self.channels
        if self.exact:
            s, q = sum(self.sum_), sum(self.sum_sq_)
            mean, var = _ratio(s, n), _exact_var(s, q, n)
        else:
            pooled = RunningStats(1, np.float64)
            for c in range(self.channels):
                one = RunningStats(1, np.float64)
                one.count_, one.images_ = self.count_, 1
                one.shift_, one._mean, one.m2_ = self.shift_[c:c + 1], self._mean[c:c + 1], self.m2_[c:c + 1]
                pooled.merge(one)
            mean = float(pooled.mean_[0]) if n else math.nan
            var = float(pooled.m2_[0] / n) if n else math.nan
        return {"count": n, "mean": mean, "var": var, "std": math.sqrt(var) if n else math.nan,
                "min": _num(self.min_.min()) if n else None, "max": _num(self.max_.max()) if n else None}

    def to_dict(self) -> dict:
        """The split entry of a stats document, with sufficient statistics for merging."""
        has = self.count_ > 0
        d = {
            "images": self.images_,
            "pixels": self.count_,
            "shape": list(self.shape_) if self.shape_ is not None else None,
            "global": self.global_stats(),
            "per_channel": {
                "count": [self.count_] * self.channels,
                "mean": [float(v) for v in self.mean_] if has else [None] * self.channels,
                "var": [float(v) for v in self.var_] if has else [None] * self.channels,
                "std": [float(v) for v in self.std_] if has else [None] * self.channels,
                "min": [_num(v) for v in self.min_] if has else [None] * self.channels,
                "max": [_num(v) for v in self.max_] if has else [None] * self.channels,
            },
        }
        if self.exact:
            d["sums"] = {"kind": "exact", "dtype": self.dtype.name, "sum": list(self.sum_),
                         "sum_sq": list(self.sum_sq_)}
        else:
            d["sums"] = {"kind": "chan", "dtype": self.dtype.name, "shift": [float(v) for v in self.shift_],
                         "mean": [float(v) for v in self._mean], "m2": [float(v) for v in self.m2_]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        """Rebuild from a split entry written by :meth:`to_dict`."""
        try:
            sums = d["sums"]
            pc = d["per_channel"]
            channels = len(pc["mean"])
            self = cls(channels, np.dtype(sums["dtype"]))
            if self.exact != (sums["kind"] == "exact"):
                raise StatsFileError(f"sums of kind {sums['kind']!r} do not fit dtype {sums['dtype']}")
            self.images_ = int(d["images"])
            self.count_ = int(d["pixels"])
            self.shape_ = tuple(d["shape"]) if d.get("shape") else None
            self._shape_seen = self.images_ > 0
            if self.count_:
                self.min_ = np.array(pc["min"], dtype=np.float64)
                self.max_ = np.array(pc["max"], dtype=np.float64)
            if self.exact:
                self.sum_ = [int(v) for v in sums["sum"]]
                self.sum_sq_ = [int(v) for v in sums["sum_sq"]]
                lens = {len(self.sum_), len(self.sum_sq_)}
            else:
                self.shift_ = np.array(sums["shift"], dtype=np.float64)
                self._mean = np.array(sums["mean"], dtype=np.float64)
                self.m2_ = np.array(sums["m2"], dtype=np.float64)
                lens = {len(self.shift_), len(self._mean), len(self.m2_)}
            if lens != {channels}:
                raise StatsFileError("per-channel lists have different lengths")
            return self
        except (KeyError, TypeError, ValueError) as e:
            raise StatsFileError(f"malformed split statistics ({type(e).__name__}: {e})") from None


try:  # the optional C accelerator (see _kernels.c); the numpy path gives identical results
    from ._kernels import u8_stats as _u8_stats
except ImportError:  # pragma: no cover - built without a C compiler
    _u8_stats = None
if os.environ.get("IMGNORM_NO_KERNELS"):
    _u8_stats = None


def integer_channel_stats(x: np.ndarray) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """Exact per-channel sum, sum of squares, min and max of integer pixels.

    Parameters
    ----------
    x : ndarray of shape (pixels, channels), integers of at most 16 bits

    Returns
    -------
    sum, sum_sq : lists of Python ints, length channels
    min, max : ndarrays of shape (channels,)
    """
    c = x.shape[1]
    if _u8_stats is not None and x.dtype == np.uint8 and c <= 4 and x.flags.c_contiguous:
        s, q, lo, hi = _u8_stats(x, c)
        return s, q, np.array(lo), np.array(hi)
    return _numpy_channel_stats(x)


# Row width of the numpy path: whole pixels, long enough that reducing rows
# runs as contiguous vector adds instead of a strided loop per channel.
_ROW = 3 * 4 * 256


def _numpy_channel_stats(x: np.ndarray):
    c = x.shape[1]
    flat = np.ascontiguousarray(x).reshape(-1)
    width = _ROW - _ROW % c
    main = flat.size - flat.size % width
    sq_dtype = (np.uint16 if x.dtype.kind in "ub" else np.int16) if x.dtype.itemsize == 1 else (
        np.uint32 if x.dtype.kind == "u" else np.int32)
    rows = flat[:main].reshape(-1, width)
    tail = flat[main:].reshape(-1, c)
    s = np.add.reduce(rows, axis=0, dtype=np.int64).reshape(-1, c).sum(axis=0)
    q = np.add.reduce(np.square(rows, dtype=sq_dtype), axis=0, dtype=np.int64).reshape(-1, c).sum(axis=0)
    s = s + tail.sum(axis=0, dtype=np.int64)
    q = q + np.square(tail, dtype=sq_dtype).sum(axis=0, dtype=np.int64)
    parts = [p for p in (rows, tail) if p.size]
    lo = np.min([np.minimum.reduce(p, axis=0).reshape(-1, c).min(axis=0) for p in parts], axis=0)
    hi = np.max([np.maximum.reduce(p, axis=0).reshape(-1, c).max(axis=0) for p in parts], axis=0)
    return [int(v) for v in s], [int(v) for v in q], lo, hi


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan  # int / int is correctly rounded in Python


def _exact_var(s: int, q: int, n: int) -> float:
    if not n:
        return math.nan
    return float(Fraction(n * q - s * s, n * n))


def _num(v):
    """A JSON number: int for whole values, else float."""
    v = float(v)
    return int(v) if v.is_integer() else v


# ------------------------------------------------------------ the document


def stats_document(*, source: str, color: str, channels: int, max_value, splits: dict[str, RunningStats],
                   fit_split: str, skipped: list | None = None, extra: dict | None = None) -> dict:
    """Build the stats document (format ``imgnorm.stats``, version 1).

    Parameters
    ----------
    source, color : str
        Where the pixels came from and how they were read.
    channels : int
    max_value : int, float or None
        The pixels' maximum (255 for uint8); adds the ``unit_scale`` entries.
    splits : dict of str to RunningStats
        The statistics of each split.
    fit_split : str
        The split whose statistics apply to the others.
    skipped : list of (file, reason), optional

    Returns
    -------
    dict
        JSON-able: per split ``images``, ``pixels``, ``shape``, ``global`` and
        ``per_channel`` statistics (lists of length ``channels``) and the
        sufficient ``sums`` that :func:`merge_documents` adds up.
    """
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "color": color,
        "channels": channels,
        "max_value": max_value,
        "fit_split": fit_split,
        "splits": {name: s.to_dict() for name, s in splits.items()},
    }
    if max_value:
        for entry in doc["splits"].values():
            pc = entry["per_channel"]
            if pc["mean"][0] is not None:
                # What torchvision's Normalize wants: statistics of x / max_value.
                entry["unit_scale"] = {"mean": [m / max_value for m in pc["mean"]],
                                       "std": [s / max_value for s in pc["std"]]}
    if skipped:
        doc["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    if extra:
        doc.update(extra)
    return doc


def merge_documents(a: dict, b: dict) -> dict:
    """The document of the union of two disjoint parts of a dataset, split by split.

    Integer pixels merge exactly (their sums are integers), so the result is
    bit for bit the document of the whole, in any order; float pixels merge
    with Chan's update (1e-12 relative).

    Parameters
    ----------
    a, b : dict
        Stats documents of the same channels, max value and colour.

    Returns
    -------
    dict
        The stats document of both; ``fit_split`` and ``source`` from ``a``.
    """
    for key in ("channels", "max_value", "color"):
        if a.get(key) != b.get(key):
            raise StatsFileError(f"cannot merge stats documents with different {key}: {a.get(key)} vs {b.get(key)}")
    merged = {}
    for name in list(a["splits"]) + [n for n in b["splits"] if n not in a["splits"]]:
        parts = [RunningStats.from_dict(d["splits"][name]) for d in (a, b) if name in d["splits"]]
        total = parts[0]
        for p in parts[1:]:
            total.merge(p)
        merged[name] = total
    return stats_document(source=f"{a['source']} + {b['source']}", color=a["color"], channels=a["channels"],
                          max_value=a["max_value"], splits=merged, fit_split=a["fit_split"])


def document_bytes(doc: dict) -> bytes:
    """A stats document as the file bytes imgnorm writes (indented JSON)."""
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_stats_document(doc: dict, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write a stats document to ``path`` (``-``: standard output), checked first.

    The file is written whole or not at all; an existing file is replaced only
    with ``force``, and something that is not a regular file (a device, a FIFO)
    is written into, never replaced.
    """
    from .outputs import OutputSet

    check_stats_document(doc)
    with OutputSet(force) as outputs:
        out = outputs.add(path, "path", what="the stats document")
        outputs.set_content(out, document_bytes(doc))
        outputs.commit()


# A stats document is a few KB; one of hundreds of MB is not one (and would be read whole).
MAX_DOCUMENT_BYTES = 64 << 20


def read_stats_document(path: str | os.PathLike) -> dict:
    """Read and check a stats document written by ``imgnorm stats -o``.

    Parameters
    ----------
    path : path-like
        The JSON file; ``-`` reads standard input.

    Returns
    -------
    dict
        The document, every field checked (:func:`check_stats_document`).

    Raises
    ------
    StatsFileError
        One line naming the file and the first field that is wrong.
    """
    path = os.fspath(path)
    try:
        if path == "-":
            import sys
            text = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                text = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise StatsFileError(f"{path}: no such stats file") from None
    except OSError as e:
        raise StatsFileError(f"{path}: cannot read the stats document ({e.strerror or e})") from None
    if len(text) > MAX_DOCUMENT_BYTES:
        raise StatsFileError(f"{path}: over {MAX_DOCUMENT_BYTES >> 20} MB, too large for a stats document; "
                             "make one with `imgnorm stats SOURCE -o FILE`")
    return parse_stats_document(text, path)


def parse_stats_document(text: bytes | str, where: str) -> dict:
    """Parse and check the JSON text of a stats document; errors name ``where``."""
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise StatsFileError(f"{where}: not a stats document (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, an integer of thousands of digits
        why = "a number of thousands of digits" if "digits" in str(e) else _first_line(e)
        raise StatsFileError(f"{where}: not a JSON stats document ({why}); "
                             "make one with `imgnorm stats SOURCE -o FILE`") from None
    try:
        return check_stats_document(doc)
    except StatsFileError as e:
        raise StatsFileError(f"{where}: {e}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def check_stats_document(doc) -> dict:
    """Check a stats document's structure and every number in it; return it.

    Raises
    ------
    StatsFileError
        Naming the first field that is missing, of the wrong type, not
        finite, or out of range (a negative or empty std, for example).
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StatsFileError(f"not an imgnorm stats document (no \"format\": \"{FORMAT}\"); "
                             "make one with `imgnorm stats SOURCE -o FILE`")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise StatsFileError(f"stats document version {version!r}; this imgnorm reads version {VERSION}. "
                             "Re-run `imgnorm stats`")
    channels = _field(doc, "channels", int, "")
    if not 1 <= channels <= 4:
        raise StatsFileError(f"channels is {channels}; expected 1 to 4")
    max_value = doc.get("max_value")
    if max_value is not None:
        _number(max_value, "max_value", positive=True)
    _field(doc, "color", str, "")
    splits = _field(doc, "splits", dict, "")
    if not splits:
        raise StatsFileError("splits is empty")
    fit = _field(doc, "fit_split", str, "")
    if fit not in splits:
        raise StatsFileError(f"fit_split {fit!r} is not one of the splits ({', '.join(map(str, splits))})")
    for name, entry in splits.items():
        where = f"splits.{name}"
        if not isinstance(entry, dict):
            raise StatsFileError(f"{where} is not an object")
        if "sums" not in entry:  # constants: a preset or --mean/--std
            _check_constants(entry, channels, where)
        else:
            _check_entry(entry, channels, where)
    return doc


def _field(d: dict, key: str, kind: type, where: str):
    name = f"{where}.{key}" if where else key
    if key not in d:
        raise StatsFileError(f"{name} is missing")
    v = d[key]
    if kind is int and (type(v) is not int):
        raise StatsFileError(f"{name} is {_show(v)}; expected a whole number")
    if kind is not int and not isinstance(v, kind):
        raise StatsFileError(f"{name} is {_show(v)}; expected {'an object' if kind is dict else kind.__name__}")
    return v


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise StatsFileError(f"{name} is {_show(v)}; expected a finite number")
    if positive and not v > 0 or nonneg and not v >= 0:
        raise StatsFileError(f"{name} is {_show(v)}; expected a number {'> 0' if positive else '>= 0'}")
    return v


def _numbers(d: dict, key: str, channels: int, where: str, *, nullable: bool = False, **kw) -> list:
    v = _field(d, key, list, where)
    if len(v) != channels:
        raise StatsFileError(f"{where}.{key} has {len(v)} value(s); the document has {channels} channel(s)")
    for i, x in enumerate(v):
        if not (nullable and x is None):
            _number(x, f"{where}.{key}[{i}]", **kw)
    return v


def _check_constants(entry: dict, channels: int, where: str) -> None:
    pc = _field(entry, "per_channel", dict, where)
    _numbers(pc, "mean", channels, f"{where}.per_channel")
    _numbers(pc, "std", channels, f"{where}.per_channel", positive=True)


def _check_entry(entry: dict, channels: int, where: str) -> None:
    images = _field(entry, "images", int, where)
    pixels = _field(entry, "pixels", int, where)
    if images < 0 or pixels < 0:
        raise StatsFileError(f"{where}: images and pixels must be >= 0")
    empty = pixels == 0
    pc = _field(entry, "per_channel", dict, where)
    for key in ("mean", "min", "max"):
        _numbers(pc, key, channels, f"{where}.per_channel", nullable=empty)
    for key in ("var", "std"):
        _numbers(pc, key, channels, f"{where}.per_channel", nullable=empty, nonneg=True)
    g = _field(entry, "global", dict, where)
    for key in ("mean", "var", "std"):
        if not (empty and (g.get(key) is None or isinstance(g.get(key), float) and math.isnan(g[key]))):
            _number(g.get(key), f"{where}.global.{key}", nonneg=key != "mean")
    sums = _field(entry, "sums", dict, where)
    kind = _field(sums, "kind", str, f"{where}.sums")
    dtype = _field(sums, "dtype", str, f"{where}.sums")
    try:
        exact = _exact_dtype(np.dtype(dtype))
    except TypeError:
        raise StatsFileError(f"{where}.sums.dtype {dtype!r} is not a numpy type") from None
    if kind != ("exact" if exact else "chan"):
        raise StatsFileError(f"{where}.sums: kind {kind!r} does not fit dtype {dtype}")
    if exact:
        s = _field(sums, "sum", list, f"{where}.sums")
        q = _field(sums, "sum_sq", list, f"{where}.sums")
        for key, v in (("sum", s), ("sum_sq", q)):
            if len(v) != channels or any(type(x) is not int or x < 0 for x in v):
                raise StatsFileError(f"{where}.sums.{key} must hold {channels} whole number(s) >= 0")
        for c in range(channels):
            if pixels * q[c] < s[c] * s[c]:
                raise StatsFileError(f"{where}.sums: sum and sum_sq of channel {c} give a negative variance")
    else:
        for key in ("shift", "mean", "m2"):
            _numbers(sums, key, channels, f"{where}.sums", nonneg=key == "m2")
