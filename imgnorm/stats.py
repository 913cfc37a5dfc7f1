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
VERSION = 2
READS = (1, 2)  # the document versions this imgnorm reads


def _exact_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "uib" and dtype.itemsize <= 2


class RunningStats:
    """Count, min, max, mean and variance per channel, updated batch by batch;
    for integer pixels, the exact histogram they all come from.

    Parameters
    ----------
    channels : int
        Number of channels (the last axis of every image).
    dtype : numpy dtype
        Pixel type. Integers of up to 16 bits (uint8, uint16, int8, int16,
        bool) are counted level by level: a histogram of 256 or 65,536 bins
        per channel, from which sums, minima, maxima and percentiles are exact
        and which merges exactly in any order. Float pixels are merged with
        Chan, Golub and LeVeque's update.

    Attributes
    ----------
    images_ : int
        Images seen.
    count_ : int
        Pixels seen per channel (pixels = height * width, summed over images).
    shape_ : tuple (height, width, channels) or None
        The shared image shape, or None once two sizes have been seen.
    hist_ : ndarray of shape (channels, levels), uint64, or None
        Integer pixels: the count of every level (bin ``i`` holds the value
        ``level_values[i]``). None for float pixels, and for statistics read
        from a document that has no histogram (version 1).
    """

    def __init__(self, channels: int, dtype):
        self.channels = int(channels)
        self.dtype = np.dtype(dtype)
        self.exact = _exact_dtype(self.dtype)
        self.images_ = 0
        self.count_ = 0
        self.shape_: tuple[int, ...] | None = None
        self._shape_seen = False
        self.hist_: np.ndarray | None = None
        if self.exact:
            self.levels = 1 << (8 * self.dtype.itemsize)
            self.hist_ = np.zeros((self.channels, self.levels), np.uint64)
            self._sums: tuple | None = None  # (sum, sum_sq, min, max) when there is no histogram
        else:
            self._min = np.full(self.channels, np.inf)
            self._max = np.full(self.channels, -np.inf)
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
            if self.hist_ is None:
                raise ValueError("these statistics have no histogram (read from a version 1 document); "
                                 "they can be merged into, not added to")
            add_histogram(x, self.hist_)
            self.count_ += n
            return
        lo, hi = x.min(axis=0), x.max(axis=0)
        if self.count_ == 0:
            self.shift_ = x[0].astype(np.float64)
        xf = x.astype(np.float64) - self.shift_
        new_mean = xf.mean(axis=0)
        new_m2 = ((xf - new_mean) ** 2).sum(axis=0)
        self._chan_merge(n, new_mean, new_m2)
        self._min = np.minimum(self._min, lo)
        self._max = np.maximum(self._max, hi)

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
        if self.exact:
            if self.hist_ is not None and other.hist_ is not None and self.dtype == other.dtype:
                self.hist_ += other.hist_
            else:  # one side has sums only (a version 1 document): so has the merge
                s, o = self._exact_sums(), other._exact_sums()
                self._sums = ([a + b for a, b in zip(s[0], o[0])], [a + b for a, b in zip(s[1], o[1])],
                              np.minimum(s[2], o[2]), np.maximum(s[3], o[3]))
                self.hist_ = None
            self.count_ += other.count_
            return self
        self._min = np.minimum(self._min, other._min)
        self._max = np.maximum(self._max, other._max)
        if other.count_:
            if self.count_ == 0:
                self.shift_ = other.shift_.copy()
            # other's mean in this object's shifted coordinates; the shift
            # difference is exact when the two shifts are close.
            self._chan_merge(other.count_, (other.shift_ - self.shift_) + other._mean, other.m2_)
        return self

    # ---------------------------------------------------------------- results

    @property
    def level_values(self) -> np.ndarray:
        """The pixel value of each histogram bin, shape (levels,): the bins are
        the levels' bit patterns read as unsigned (int8's -1 is bin 255)."""
        return level_values(self.dtype)

    def _exact_sums(self) -> tuple:
        """Per channel: exact sum, sum of squares (Python ints), min, max (float arrays)."""
        if self.hist_ is None:
            return self._sums
        values = self.level_values
        sums, sqs = [], []
        lo = np.full(self.channels, np.inf)
        hi = np.full(self.channels, -np.inf)
        for c in range(self.channels):
            nz = np.flatnonzero(self.hist_[c])
            counts = [int(v) for v in self.hist_[c][nz]]
            vals = [int(v) for v in values[nz]]
            sums.append(sum(k * v for k, v in zip(counts, vals)))
            sqs.append(sum(k * v * v for k, v in zip(counts, vals)))
            if nz.size:
                lo[c], hi[c] = min(vals), max(vals)
        return sums, sqs, lo, hi

    @property
    def sum_(self) -> list[int]:
        """Exact per-channel sums (integer pixels)."""
        return self._exact_sums()[0]

    @property
    def sum_sq_(self) -> list[int]:
        """Exact per-channel sums of squares (integer pixels)."""
        return self._exact_sums()[1]

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
            s, q = self._exact_sums()[:2]
            return np.array([_exact_var(a, b, self.count_) for a, b in zip(s, q)])
        return self.m2_ / self.count_ if self.count_ else np.full(self.channels, np.nan)

    @property
    def std_(self) -> np.ndarray:
        return np.sqrt(self.var_)

    @property
    def min_(self) -> np.ndarray:
        """Per-channel minimum, shape (channels,) (inf before any pixel)."""
        return self._exact_sums()[2] if self.exact else self._min

    @property
    def max_(self) -> np.ndarray:
        """Per-channel maximum, shape (channels,) (-inf before any pixel)."""
        return self._exact_sums()[3] if self.exact else self._max

    def global_stats(self) -> dict:
        """Statistics of all channels pooled together."""
        n = self.count_ * self.channels
        if not n:
            return {"count": 0, "mean": None, "var": None, "std": None, "min": None, "max": None}
        if self.exact:
            s_, q_, lo, hi = self._exact_sums()
            s, q = sum(s_), sum(q_)
            mean, var = _ratio(s, n), _exact_var(s, q, n)
        else:
            pooled = RunningStats(1, np.float64)
            for c in range(self.channels):
                one = RunningStats(1, np.float64)
                one.count_, one.images_ = self.count_, 1
                one.shift_, one._mean, one.m2_ = self.shift_[c:c + 1], self._mean[c:c + 1], self.m2_[c:c + 1]
                pooled.merge(one)
            mean, var = float(pooled.mean_[0]), float(pooled.m2_[0] / n)
            lo, hi = self._min, self._max
        return {"count": n, "mean": mean, "var": var, "std": math.sqrt(var),
                "min": _num(lo.min()), "max": _num(hi.max())}

    def to_dict(self, percentiles=None) -> dict:
        """The split entry of a stats document, with sufficient statistics for
        merging (the histogram of integer pixels, or Chan's sums of float
        ones) and, for integer pixels, exact percentiles (``percentiles``:
        the q in 0..100; default :data:`PERCENTILES`)."""
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
            s, q = self._exact_sums()[:2]
            d["sums"] = {"kind": "exact", "dtype": self.dtype.name, "sum": list(s), "sum_sq": list(q)}
        else:
            d["sums"] = {"kind": "chan", "dtype": self.dtype.name, "shift": [float(v) for v in self.shift_],
                         "mean": [float(v) for v in self._mean], "m2": [float(v) for v in self.m2_]}
        if self.hist_ is not None:
            d["hist"] = histogram_to_json(self.hist_)
        if has:
            d["percentiles"] = self.percentile_block(PERCENTILES if percentiles is None else percentiles)
        return d

    def percentile_block(self, q) -> dict:
        """Exact percentiles (numpy's default linear method), median, IQR and
        median absolute deviation, global and per channel; for float pixels,
        nulls with the reason."""
        q = [float(v) for v in q]
        if self.hist_ is None:
            why = ("float pixels: exact percentiles come from the histogram of 8- or 16-bit pixels" if not self.exact
                   else "read from a document without histograms (version 1)")
            return {"q": q, "global": None, "per_channel": None, "reason": why}
        return {"q": q, "global": robust_summary(self.hist_.sum(axis=0), self.dtype, q),
                "per_channel": [robust_summary(h, self.dtype, q) for h in self.hist_]}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        """Rebuild from a split entry written by :meth:`to_dict` (version 1 or 2)."""
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
            if self.exact and d.get("hist") is not None:
                self.hist_ = histogram_from_json(d["hist"], channels, self.levels)
                if [int(v) for v in self.hist_.sum(axis=1)] != [self.count_] * channels:
                    raise StatsFileError("the histogram's counts do not add up to the pixel count")
                return self
            if self.exact:
                lo = np.array(pc["min"], dtype=np.float64) if self.count_ else np.full(channels, np.inf)
                hi = np.array(pc["max"], dtype=np.float64) if self.count_ else np.full(channels, -np.inf)
                self._sums = ([int(v) for v in sums["sum"]], [int(v) for v in sums["sum_sq"]], lo, hi)
                self.hist_ = None
                lens = {len(self._sums[0]), len(self._sums[1])}
            else:
                if self.count_:
                    self._min = np.array(pc["min"], dtype=np.float64)
                    self._max = np.array(pc["max"], dtype=np.float64)
                self.shift_ = np.array(sums["shift"], dtype=np.float64)
                self._mean = np.array(sums["mean"], dtype=np.float64)
                self.m2_ = np.array(sums["m2"], dtype=np.float64)
                lens = {len(self.shift_), len(self._mean), len(self.m2_)}
            if lens != {channels}:
                raise StatsFileError("per-channel lists have different lengths")
            return self
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise StatsFileError(f"malformed split statistics ({type(e).__name__}: {e})") from None

    def __getstate__(self) -> dict:
        # 65,536-bin histograms of 16-bit pixels are mostly empty: they travel
        # between processes as their non-zero bins.
        state = dict(self.__dict__)
        if self.hist_ is not None and self.levels > 256:
            state["hist_"] = _sparse(self.hist_)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("hist_"), tuple):
            state["hist_"] = _dense(state["hist_"], state["channels"], state["levels"])
        self.__dict__.update(state)


# Percentiles a stats document reports by default (``--percentiles`` chooses others).
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)


def level_values(dtype) -> np.ndarray:
    """The pixel value of each histogram bin of ``dtype`` (int64, shape (levels,))."""
    dtype = np.dtype(dtype)
    bits = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint64)
    unsigned = bits.astype(np.uint8 if dtype.itemsize == 1 else np.uint16)
    if dtype.kind == "i":
        return unsigned.view(np.int8 if dtype.itemsize == 1 else np.int16).astype(np.int64)
    return unsigned.astype(np.int64)


try:  # the optional C accelerator (see _kernels.c); numpy's bincount gives identical counts
    from ._kernels import u8_hist as _u8_hist, u16_hist as _u16_hist
except ImportError:  # pragma: no cover - built without a C compiler
    _u8_hist = _u16_hist = None
if os.environ.get("IMGNORM_NO_KERNELS"):
    _u8_hist = _u16_hist = None


def add_histogram(x: np.ndarray, hist: np.ndarray) -> None:
    """Add the per-channel counts of integer pixels ``x`` (pixels, channels) into
    ``hist`` (channels, levels) uint64, level by level (bins: the pixels' bits
    read as unsigned)."""
    channels = x.shape[1]
    flat = np.ascontiguousarray(x).reshape(-1)
    raw = flat.view(np.uint8 if flat.dtype.itemsize == 1 else np.uint16)
    kernel = _u8_hist if flat.dtype.itemsize == 1 else _u16_hist
    if kernel is not None and channels <= 4:
        kernel(raw, channels, hist)
        return
    levels = hist.shape[1]
    for c in range(channels):
        hist[c] += np.bincount(raw[c::channels], minlength=levels).astype(np.uint64)


def histogram_to_json(hist: np.ndarray) -> dict:
    """A histogram for a document: dense lists for 256 levels, the non-zero bins for 65,536."""
    if hist.shape[1] <= 256:
        return {"levels": hist.shape[1], "counts": [[int(v) for v in row] for row in hist]}
    bins, counts = _sparse(hist)
    return {"levels": hist.shape[1], "bins": bins, "counts": counts}


def histogram_from_json(h: dict, channels: int, levels: int) -> np.ndarray:
    if not isinstance(h, dict) or h.get("levels") != levels:
        raise StatsFileError(f"the histogram must have {levels} levels")
    counts = h.get("counts")
    if not isinstance(counts, list) or len(counts) != channels:
        raise StatsFileError(f"the histogram must have {channels} channel(s)")
    if "bins" in h:
        return _dense((h["bins"], counts), channels, levels)
    if any(not isinstance(row, list) or len(row) != levels for row in counts):
        raise StatsFileError(f"each channel of the histogram must have {levels} counts")
    return _counts_array(counts)


def _counts_array(rows) -> np.ndarray:
    if any(type(v) is not int or not 0 <= v < 1 << 63 for row in rows for v in row):
        raise StatsFileError("histogram counts must be whole numbers of 0 to 2**63 - 1")
    return np.array(rows, dtype=np.uint64)


def _sparse(hist: np.ndarray) -> tuple[list, list]:
    bins = [[int(i) for i in np.flatnonzero(row)] for row in hist]
    return bins, [[int(v) for v in row[b]] for row, b in zip(hist, bins)]


def _dense(sparse, channels: int, levels: int) -> np.ndarray:
    bins, counts = sparse
    if not isinstance(bins, list) or len(bins) != channels or len(counts) != channels:
        raise StatsFileError(f"the histogram must have {channels} channel(s)")
    out = np.zeros((channels, levels), np.uint64)
    for c, (b, k) in enumerate(zip(bins, counts)):
        if not isinstance(b, list) or not isinstance(k, list) or len(b) != len(k) or \
                any(type(i) is not int or not 0 <= i < levels for i in b):
            raise StatsFileError("the histogram's bins must be whole numbers within its levels")
        if k:
            out[c, b] = _counts_array([k])[0]
    return out


# ---------------------------------------------------------------- exact percentiles


def _kth(cum: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Indexes (into the value-sorted bins) of the k-th smallest values (k from 0)."""
    return np.searchsorted(cum, k, side="right")


def percentiles(counts: np.ndarray, values: np.ndarray, q, dtype) -> np.ndarray:
    """``numpy.percentile(pixels, q)`` (its default linear method), bit for bit,
    from the pixels' histogram: ``counts`` of each level, ``values`` (int64,
    ascending) the levels' values, ``dtype`` the pixels' type.

    numpy's steps, on the same types: ``q / 100``, the virtual index
    ``(n - 1) * q``, its floor and the next index (both clipped to the data),
    the two neighbours (of the pixels' dtype, so their difference is taken in
    it), and its two-sided interpolation ``a + (b - a) * t`` (``b - (b - a) *
    (1 - t)`` for ``t >= 0.5``).
    """
    n = int(counts.sum())
    qs = np.true_divide(np.asarray(q, dtype=np.float64), 100)
    virtual = (n - 1) * qs
    prev = np.floor(virtual)
    nxt = prev + 1
    above, below = virtual >= n - 1, virtual < 0
    prev[above], nxt[above] = n - 1, n - 1
    prev[below], nxt[below] = 0, 0
    gamma = virtual - np.where(above, -1, prev)  # numpy subtracts the index -1 it uses for "the last"
    cum = np.cumsum(counts.astype(np.int64))
    sorted_values = values.astype(np.dtype(dtype))
    a = sorted_values[_kth(cum, prev.astype(np.int64))]
    b = sorted_values[_kth(cum, nxt.astype(np.int64))]
    diff = b - a
    lerp = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=lerp, where=gamma >= 0.5, casting="unsafe")
    return lerp


def median(counts: np.ndarray, values: np.ndarray, dtype) -> float:
    """``numpy.median(pixels)``: the middle value, or the mean of the two middle ones (in float64)."""
    n = int(counts.sum())
    cum = np.cumsum(counts.astype(np.int64))
    sorted_values = values.astype(np.dtype(dtype))
    if n % 2:
        return float(np.float64(sorted_values[_kth(cum, np.array([n // 2]))][0]))
    two = sorted_values[_kth(cum, np.array([n // 2 - 1, n // 2]))]
    return float(np.mean(two, dtype=np.float64))


def percentile_fit(counts: np.ndarray, dtype, clip=None) -> dict:
    """What percentile-based scaling needs of one histogram: with ``clip =
    (lo, hi)`` percentiles, the bounds ``lo``/``hi`` and the mean, std, median
    and IQR of the pixels clipped to them, else those of the pixels.

    Exact: the percentiles are numpy's (bit for bit); the clipped mean and
    variance are computed in rationals from the counts and rounded once; the
    median and IQR of clipped pixels are numpy's on ``np.clip(x, lo, hi)``.
    """
    dtype = np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)
    values = level_values(dtype)
    order = np.argsort(values, kind="stable")
    counts, values = counts[order], values[order]
    keep = counts > 0
    out: dict = {}
    if clip is not None:
        lo, hi = (float(v) for v in percentiles(counts, values, list(clip), dtype))
        out.update(lo=lo, hi=hi)
        clipped = np.clip(values.astype(np.float64), lo, hi)  # as np.clip(x, lo, hi) of the pixels: float64
        vals, inverse = np.unique(clipped[keep], return_inverse=True)
        cnts = np.zeros(len(vals), np.int64)
        np.add.at(cnts, inverse, counts[keep].astype(np.int64))
        counts, values, dtype = cnts, vals, np.dtype(np.float64)
        keep = counts > 0
    n = int(counts.sum())
    fr = [Fraction(float(v)) if dtype.kind == "f" else Fraction(int(v)) for v in values[keep]]
    ks = [int(k) for k in counts[keep]]
    total = sum(k * v for k, v in zip(ks, fr))
    mean = total / n
    var = sum(k * v * v for k, v in zip(ks, fr)) / n - mean * mean
    p = percentiles(counts, values, [25, 75], dtype)
    out.update(mean=float(mean), std=math.sqrt(float(var)), median=median(counts, values, dtype),
               iqr=float(p[1] - p[0]))
    return out


def robust_summary(counts: np.ndarray, dtype, q) -> dict:
    """Percentiles, median, IQR and MAD of the pixels a histogram counts, as numpy computes them:
    ``percentile(x, q)``, ``median(x)``, ``percentile(x, 75) - percentile(x, 25)`` and
    ``median(abs(x - median(x)))``."""
    dtype = np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)  # numpy cannot subtract bools
    values = level_values(dtype)
    order = np.argsort(values, kind="stable")
    counts, values = counts[order], values[order]
    p = percentiles(counts, values, list(q) + [25, 75], dtype)
    med = median(counts, values, dtype)
    # |x - median| for every level: exact in float64 (levels are integers, the median a half-integer)
    dev = np.abs(values.astype(np.float64) - med)
    dorder = np.argsort(dev, kind="stable")
    dcounts, dvals = counts[dorder], dev[dorder]
    keep = dcounts > 0
    mad = median(dcounts[keep], dvals[keep], np.float64)
    return {"percentiles": [float(v) for v in p[:-2]], "median": med, "iqr": float(p[-1] - p[-2]), "mad": mad}


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
                   fit_split: str, skipped: list | None = None, extra: dict | None = None,
                   percentiles=None, classes: dict | None = None, class_names: list[str] | None = None) -> dict:
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
    percentiles : sequence of float, optional
        The q (0..100) of the percentile blocks; default :data:`PERCENTILES`.
    classes : dict of str to dict of int to RunningStats, optional
        Per split, the statistics of each class label (``--per-class``);
        ``class_names`` names the labels.

    Returns
    -------
    dict
        JSON-able: per split ``images``, ``pixels``, ``shape``, ``global`` and
        ``per_channel`` statistics (lists of length ``channels``), exact
        ``percentiles`` (with the median, IQR and MAD) and the histogram
        ``hist`` of integer pixels, the sufficient ``sums`` that
        :func:`merge_documents` adds up, and per-class entries when asked.
    """
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "color": color,
        "channels": channels,
        "max_value": max_value,
        "fit_split": fit_split,
        "splits": {name: _entry(s, max_value, percentiles) for name, s in splits.items()},
    }
    for name, by_label in (classes or {}).items():
        if name in doc["splits"]:
            names = class_names or []
            # A class's level counts stay out: with 16-bit pixels and many
            # classes they would make the document too big to read back.
            doc["splits"][name]["classes"] = {
                (names[k] if k < len(names) else str(k)): _entry(rs, max_value, percentiles, hist=False)
                for k, rs in sorted(by_label.items())}
    if skipped:
        doc["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    if extra:
        doc.update(extra)
    return doc


def _entry(rs: RunningStats, max_value, percentiles, hist: bool = True) -> dict:
    entry = rs.to_dict(percentiles)
    if not hist:
        entry.pop("hist", None)
    pc = entry["per_channel"]
    if max_value and pc["mean"][0] is not None:
        # What torchvision's Normalize wants: statistics of x / max_value.
        entry["unit_scale"] = {"mean": [m / max_value for m in pc["mean"]],
                               "std": [s / max_value for s in pc["std"]]}
    return entry


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
    q = (a["splits"][next(iter(a["splits"]))].get("percentiles") or {}).get("q")
    doc = stats_document(source=f"{a['source']} + {b['source']}", color=a["color"], channels=a["channels"],
                         max_value=a["max_value"], splits=merged, fit_split=a["fit_split"], percentiles=q)
    if a.get("provenance") or b.get("provenance"):  # a digest of two parts is not one of the whole: keep both
        doc["provenance"] = {"merged": [a.get("provenance"), b.get("provenance")]}
    return doc


def document_json(doc, level: int = 0) -> str:
    """``json.dumps(doc, indent=2)``, but a list of plain values on one line.

    Histograms hold up to 65536 counts per channel: one line per channel,
    not one per number, keeps a document small and readable.
    """
    if isinstance(doc, dict) and doc:
        pad = "\n" + "  " * (level + 1)
        items = (f"{json.dumps(str(k))}: {document_json(v, level + 1)}" for k, v in doc.items())
        return "{" + pad + ("," + pad).join(items) + "\n" + "  " * level + "}"
    if isinstance(doc, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in doc):
        pad = "\n" + "  " * (level + 1)
        return "[" + pad + ("," + pad).join(document_json(v, level + 1) for v in doc) + "\n" + "  " * level + "]"
    return json.dumps(doc)


def document_bytes(doc: dict) -> bytes:
    """A stats document as the file bytes imgnorm writes (indented JSON, lists of numbers on one line)."""
    return (document_json(doc) + "\n").encode()


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
    if type(version) is not int or version not in READS:
        raise StatsFileError(f"stats document version {version!r}; this imgnorm reads versions "
                             f"{', '.join(map(str, READS))}. Re-run `imgnorm stats`")
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
    try:
        finite = type(v) in (int, float) and math.isfinite(v)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
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
    if "hist" in entry:
        try:
            RunningStats.from_dict(entry)  # the counts add up to the pixels, bins within the levels
        except StatsFileError as e:
            raise StatsFileError(f"{where}.hist: {e}") from None
    for name, sub in (entry.get("classes") or {}).items() if isinstance(entry.get("classes"), dict) else ():
        if not isinstance(sub, dict):
            raise StatsFileError(f"{where}.classes.{name} is not an object")
        _check_entry(sub, channels, f"{where}.classes.{name}")
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
