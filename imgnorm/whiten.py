"""ZCA and PCA whitening, fitted in one streaming pass and exact for integer pixels.

Keras' ``ImageDataGenerator(zca_whitening=True)`` centres the training images
per channel, builds ``sigma = X^T X / N`` of the flattened images (D = H x W
x C values each) and whitens with ``W = U diag(1 / sqrt(s + eps)) U^T``. It
holds every image in memory as float32 and sums in float32. Here the sums
stream: each batch adds ``X'^T X'`` and ``sum X'`` of the images shifted by
the middle of their range (128 for 8-bit pixels), so every sum is an integer
held exactly in float64 (8-bit: up to ~5 x 10^11 images; 16-bit: ~2 x 10^6),
in any order, batching or split into parts (:meth:`Whitener.merge`). The centred matrix
and the per-channel mean and std are derived from those sums once, then
decomposed with ``numpy.linalg.eigh`` in float64.

- ``zca`` (Keras' ``zca_whitening``): ``z = (x - mean) W``, images keep their shape;
- ``pca``: ``z = (x - mean) U diag(1 / sqrt(s + eps))``, the top ``components``
  coordinates in the eigenbasis (largest variance first), a vector per image;
- ``keras=3`` uses Keras 3's placement of epsilon: ``1 / (sqrt(s) + eps / sqrt(N))``
  (its SVD of the data keeps at most N components: so does this).
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import numpy as np

from .errors import DataError, OptionError, SourceError, StatsFileError, show_path

METHODS = ("zca", "pca")
DEFAULT_EPSILON = 1e-6
# D x D float64 matrices alive at once at the peak: the sums, eigh's copy,
# its eigenvectors and its workspace (1 + 6D + 2D^2), and the result.
PEAK_MATRICES = 6
MEMORY_SHARE = 0.5  # of the machine's physical memory
# Rows per matrix product when whitening: a fixed block (the last one padded)
# so that every image's values come from the same BLAS call shape, whatever
# the batch size: the output's bytes do not depend on it.
APPLY_ROWS = 512
# Rows per float32 product of 8-bit images (see Whitener.partial_fit).
EXACT32_ROWS = 1024
FORMAT = "imgnorm.whitening"
VERSION = 1


def memory_limit() -> int:
    """Bytes the covariance and its decomposition may take: half the physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        total = 8 << 30
    return int(total * MEMORY_SHARE)


def check_dimension(shape: tuple[int, ...], where: str = "the images") -> int:
    """``D = H x W x C`` of ``shape``, refused (before any pixel is read) when its D x D matrices would not fit."""
    d = int(np.prod(shape))
    need = PEAK_MATRICES * d * d * 8
    limit = memory_limit()
    if need > limit:
        side = int(math.isqrt(limit // (PEAK_MATRICES * 8)) // max(1, shape[-1]))
        suggest = int(math.isqrt(side)) if side else 1
        raise OptionError(f"whitening {where} of shape {'x'.join(map(str, shape))} means D = {d:,} values per image "
                          f"and {PEAK_MATRICES} matrices of D x D float64: {need / 2**30:.1f} GiB, more than the "
                          f"{limit / 2**30:.1f} GiB (half this machine's memory) imgnorm allows; pass a smaller "
                          f"--size (at most about {suggest}x{suggest} with {shape[-1]} channel(s)) or --color gray",
                          option="--size")
    return d


def _shift_for(x: np.ndarray) -> np.ndarray:
    """The value per channel subtracted before summing, shape (channels,).

    8- and 16-bit pixels: the middle of the type's range (128, 32768; 0 for
    signed), the same for every part of a dataset, so sums of parts add up to
    the sums of the whole bit for bit, in any order. Others: the first
    image's channel means, against cancellation (a float dataset sitting on
    a large offset).
    """
    c = x.shape[-1]
    if x.dtype.kind in "ui" and x.dtype.itemsize <= 2:
        info = np.iinfo(x.dtype)
        return np.full(c, float((int(info.min) + int(info.max) + 1) // 2))
    first = x[0].reshape(-1, c).astype(np.float64).mean(axis=0)
    return np.round(first) if x.dtype.kind in "ui" else first


def gram(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x.T @ x`` for x of shape (n, D).

    numpy hands this pattern to BLAS's symmetric rank-k update (``syrk``),
    half the work of a general product: measured 1.3x faster than one
    ``gemm`` per upper block pair. For integer-valued x every value is
    exact, so the result does not depend on how BLAS splits the work.
    """
    return np.matmul(x.T, x, out=out)


class Whitener:
    """ZCA or PCA whitening of images, fitted streaming (scikit-learn style).

    Parameters
    ----------
    method : {"zca", "pca"}
    epsilon : float
        Added to the eigenvalues (Keras 2 / keras-preprocessing); with
        ``keras=3``, ``epsilon / sqrt(N)`` is added to their square roots.
    keras : {2, 3}
        Where epsilon goes (above).
    standardize : bool
        Divide by the per-channel std after centring, before whitening (as
        ``featurewise_std_normalization``; Keras itself turns that off when
        whitening).
    components : int, optional
        PCA only: keep the first (largest-variance) ``components``.
    unit : bool
        Whiten values on the 0-1 scale (``x / max_value``, Keras'
        ``rescale=1/255``) instead of pixel levels; epsilon is on that scale.
    precision : {"float64", "float32"}
        The arithmetic of the whitening product (the fit's sums are exact
        either way). ``float32`` is Keras' own: about twice as fast, values
        off by ~1e-6 relative; opt-in.

    Attributes
    ----------
    n_samples_ : int
    image_shape_ : (height, width, channels)
    mean_ : ndarray (channels,)
        Per-channel mean, on the pixels' scale (0-1 with ``unit``).
    std_ : ndarray (channels,) or None
        With ``standardize``.
    eigenvalues_ : ndarray (D,)
        Of the matrix ``(1/N) sum x x^T`` of the centred (standardized)
        flattened images, largest first, negatives from rounding set to 0.
    eigenvectors_ : ndarray (D, D)
        Columns, in the order of ``eigenvalues_``; each one's largest entry positive.
    matrix_ : ndarray
        ZCA: (D, D), ``z = x_centred @ matrix_``; PCA: (K, D), ``z = x_centred @ matrix_.T``.
    """

    def __init__(self, method: str = "zca", *, epsilon: float = DEFAULT_EPSILON, keras: int = 2,
                 standardize: bool = False, components: int | None = None, unit: bool = False,
                 precision: str = "float64"):
        if method not in METHODS:
            raise OptionError(f"whitening method {method!r} is not one of {', '.join(METHODS)}")
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
            raise OptionError(f"--epsilon must be a finite number of 0 or more, got {epsilon!r}", option="--epsilon")
        if keras not in (2, 3):
            raise OptionError(f"--keras must be 2 or 3, got {keras!r}", option="--keras")
        if components is not None and (method != "pca" or int(components) < 1):
            raise OptionError("--components N (1 or more) keeps N principal components; it goes with --pca",
                              option="--components")
        if precision not in ("float64", "float32"):
            raise OptionError(f"--precision must be float64 or float32, got {precision!r}", option="--precision")
        self.precision = precision
        self.method, self.epsilon, self.keras = method, float(epsilon), keras
        self.standardize, self.components, self.unit = standardize, components, unit
        self._reset()

    # ---------------------------------------------------------------- fitting

    def _reset(self) -> None:
        self.n_samples_ = 0
        self.image_shape_ = None
        self.dtype_ = None
        self.max_value_ = None
        self._shift = None  # (C,) whole numbers (first image's rounded channel means) for integer pixels
        self._sum = None  # (D,) sum of shifted values
        self._sum_sq = None  # (D, D) sum of outer products of shifted values
        self._work = None  # (D, D) one batch's products, reused
        self._consumed = False
        self._solved = None

    def _refuse_frozen(self) -> None:
        if getattr(self, "_frozen", False):
            raise DataError("this Whitener was read from an HDF5 file, which holds its decomposition but not "
                            "its sums: fit a new one, or load the --stats-out .npz")
        if getattr(self, "_consumed", False):
            raise DataError("this Whitener's sums went into its decomposition (to save memory): fit a new one")

    def fit(self, x: np.ndarray, max_value: float | None = None) -> "Whitener":
        """Fit on images ``x`` of shape (n, height, width, channels)."""
        self._frozen = False
        self._reset()
        return self.partial_fit(x, max_value)

    def partial_fit(self, x: np.ndarray, max_value: float | None = None) -> "Whitener":
        """Add images ``x`` (n, height, width, channels) to the sums; exact for integer pixels."""
        self._refuse_frozen()
        x = np.asarray(x)
        if x.ndim != 4:
            raise DataError(f"expected images of shape (n, height, width, channels), got {x.shape}")
        if x.dtype.kind not in "uif":
            raise DataError(f"images of dtype {x.dtype} are not pixels")
        if self.image_shape_ is None:
            d = check_dimension(x.shape[1:])
            self.image_shape_, self.dtype_ = tuple(int(v) for v in x.shape[1:]), x.dtype
            from .sources import MAX_VALUES
            self.max_value_ = max_value if max_value is not None else MAX_VALUES.get(x.dtype)
            if self.unit and self.max_value_ is None:
                raise OptionError("the 0-1 scale (unit) of float pixels needs --max-value", option="--max-value")
            self._sum, self._sum_sq = np.zeros(d), np.zeros((d, d))
        elif tuple(x.shape[1:]) != self.image_shape_:
            raise DataError(f"images of shape {x.shape[1:]}, but the Whitener was fitted on {self.image_shape_}")
        if not len(x):
            return self
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError("the images hold NaN or infinity")
        if self._shift is None:
            self._shift = _shift_for(x)
        from .workers import blas_on_all_cores
        exact32 = x.dtype.itemsize == 1 and x.dtype.kind in "ui"  # shifted 8-bit values: |v| <= 128
        with blas_on_all_cores():
            for i in range(0, len(x), EXACT32_ROWS if exact32 else len(x)):
                part = x[i:i + EXACT32_ROWS] if exact32 else x
                # float32 sums of at most EXACT32_ROWS products of 8-bit values (each <= 2**14) stay
                # below 2**24: whole numbers float32 holds exactly, at twice float64's speed
                kind = np.float32 if exact32 else np.float64
                flat = (part.reshape(len(part), -1, x.shape[-1]).astype(kind) - self._shift.astype(kind))
                flat = flat.reshape(len(part), -1)
                self._sum += flat.sum(axis=0, dtype=np.float64)
                # the product goes into one buffer kept across batches: a fresh D x D
                # array each time would page-fault all of its pages again
                if self._work is None or self._work.dtype != flat.dtype:
                    self._work = np.empty(self._sum_sq.shape, flat.dtype)
                np.add(self._sum_sq, gram(flat, self._work), out=self._sum_sq)
        self.n_samples_ += len(x)
        self._solved = None
        return self

    def merge(self, other: "Whitener") -> "Whitener":
        """Add the sums of a Whitener fitted on other images of the same shape (exact for integer pixels)."""
        self._refuse_frozen()
        other._refuse_frozen()
        if other.n_samples_ == 0:
            return self
        if self.n_samples_ == 0:
            for k in ("image_shape_", "dtype_", "max_value_", "_shift"):
                setattr(self, k, getattr(other, k))
            self._sum, self._sum_sq, self.n_samples_ = other._sum.copy(), other._sum_sq.copy(), other.n_samples_
            self._solved = None
            return self
        if other.image_shape_ != self.image_shape_:
            raise DataError(f"cannot merge Whiteners of images {other.image_shape_} and {self.image_shape_}")
        delta = other._shift - self._shift  # re-centre the other's sums on this shift
        c = self.image_shape_[-1]
        dv = np.tile(delta, self._sum.size // c)
        s_other = other._sum + other.n_samples_ * dv
        outer = np.outer(other._sum, dv)
        self._sum_sq += other._sum_sq + (outer + outer.T) + other.n_samples_ * np.outer(dv, dv)
        self._sum += s_other
        self.n_samples_ += other.n_samples_
        self._solved = None
        return self

    # ---------------------------------------------------------------- solving

    def _channel_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and population variance of the (shifted) values, exact for integer pixels."""
        c = self.image_shape_[-1]
        n = self.n_samples_ * (self._sum.size // c)
        sums = self._sum.reshape(-1, c)
        sq = np.diagonal(self._sum_sq).reshape(-1, c)
        means, variances = np.empty(c), np.empty(c)
        for k in range(c):
            if self.dtype_.kind in "ui":  # integer sums: exact ratios, rounded once
                t, q = Fraction(int(math.fsum(sums[:, k]))), Fraction(int(math.fsum(sq[:, k])))
                m = t / n
                means[k] = float(m + Fraction(self._shift[k]))
                variances[k] = float(q / n - m * m)
            else:
                m = math.fsum(sums[:, k]) / n
                means[k] = m + self._shift[k]
                variances[k] = max(0.0, math.fsum(sq[:, k]) / n - m * m)
        return means, variances

    def _solve(self, consume: bool = False) -> dict:
        """Decompose (once). ``consume``: build the centred matrix in the sums' own memory (one
        D x D matrix less at the peak); the Whitener can then not be saved, merged or refitted."""
        if self._solved is not None:
            return self._solved
        if self.n_samples_ == 0:
            raise DataError("the Whitener is not fitted: call fit() or partial_fit() with images first")
        from .workers import blas_on_all_cores

        n = self.n_samples_
        self._work = None  # the batch buffer: its memory goes to the decomposition
        mean, var = self._channel_moments()
        scale = self.max_value_ if self.unit else 1.0
        with blas_on_all_cores():
            held = self._centred_matrix(mean, var, scale, consume)
            eigenvalues, eigenvectors = _decompose(held)  # lets the matrix go as soon as eigh has copied it
            std, warnings = held
            smallest = float(eigenvalues[-1])
            np.maximum(eigenvalues, 0.0, out=eigenvalues)  # PSD: negatives are rounding
            k = eigenvalues.size if self.keras == 2 else min(eigenvalues.size, n)  # Keras 3's SVD keeps min(N, D)
            if self.method == "pca":
                k = min(k, self.components or k)
            if self.epsilon == 0 and not eigenvalues[:k].all():
                raise DataError(f"the data has {int((eigenvalues[:k] == 0).sum())} direction(s) of zero variance "
                                "(eigenvalue 0): with epsilon 0 their whitening scale is infinite; pass --epsilon")
            inv = self._inverse_roots(eigenvalues[:k], n)
            if self.method == "zca":  # U diag(inv) U^T as A A^T, A = U diag(sqrt(inv)): BLAS's syrk, half the work
                half = eigenvectors[:, :k] * np.sqrt(inv)
                matrix = half @ half.T
                del half
            else:
                matrix = np.ascontiguousarray((eigenvectors[:, :k] * inv).T)
        self._solved = {"mean": mean / scale, "std": std, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors,
                        "matrix": matrix, "k": k, "smallest": smallest, "warnings": warnings}
        return self._solved

    def _centred_matrix(self, mean: np.ndarray, var: np.ndarray, scale: float, consume: bool = False) -> list:
        """``((1/N) sum (x - mean)(x - mean)^T`` (divided by the std's outer product with
        ``standardize``), built from the sums in row blocks: no D x D temporary but the result.

        Returns ``[matrix, std or None, warnings]`` (a list, so the matrix can
        be handed on without a reference left behind). Each element is
        ``S_ab - (s_a d_b + d_a s_b) + N d_a d_b``: the same products added in
        the same pairs for (a, b) and (b, a), so the matrix is symmetric to the last bit.
        """
        n, c, d = self.n_samples_, self.image_shape_[-1], self._sum.size
        delta = np.tile(mean - self._shift, d // c)  # the channel means, on the shifted values
        std, warnings, divide = None, [], None
        if self.standardize:
            std = np.sqrt(var) / scale
            flat_std = std == 0
            if flat_std.any():
                warnings.append(f"channel(s) {', '.join(str(k) for k in np.flatnonzero(flat_std))} have std 0; "
                                "their scale is 1")
            divide = np.tile(np.where(flat_std, 1.0, std), d // c)
        if consume:
            cov, self._sum_sq, self._consumed = self._sum_sq, None, True
        else:
            cov = self._sum_sq.copy()
        step = max(1, (8 << 20) // (8 * d))
        for i in range(0, d, step):
            rows = slice(i, i + step)
            cross = np.outer(self._sum[rows], delta)
            cross += np.outer(delta[rows], self._sum)
            cov[rows] -= cross
            cov[rows] += n * np.outer(delta[rows], delta)
            cov[rows] /= n * scale * scale
            if divide is not None:
                cov[rows] /= np.outer(divide[rows], divide)
        return [cov, std, warnings]

    def _inverse_roots(self, eigenvalues: np.ndarray, n: int) -> np.ndarray:
        """``1 / sqrt(s + eps)`` (Keras 2) or ``1 / (sqrt(s) + eps / sqrt(N))`` (Keras 3)."""
        with np.errstate(divide="ignore"):
            if self.keras == 2:
                return 1.0 / np.sqrt(eigenvalues + self.epsilon)
            return 1.0 / (np.sqrt(eigenvalues) + self.epsilon / math.sqrt(n))

    @property
    def mean_(self) -> np.ndarray:
        return self._solve()["mean"]

    @property
    def std_(self) -> np.ndarray | None:
        return self._solve()["std"]

    @property
    def eigenvalues_(self) -> np.ndarray:
        return self._solve()["eigenvalues"]

    @property
    def eigenvectors_(self) -> np.ndarray:
        return self._solve()["eigenvectors"]

    @property
    def matrix_(self) -> np.ndarray:
        return self._solve()["matrix"]

    @property
    def warnings_(self) -> list[str]:
        return self._solve()["warnings"]

    # ---------------------------------------------------------------- applying

    def fit_stats(self, stats) -> "Whitener":
        """Nothing to take from the statistics pass: the sums come from the pixels (:meth:`partial_fit`)."""
        return self

    def output_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """What one image becomes: its own shape (ZCA) or (components,) (PCA)."""
        return tuple(image_shape) if self.method == "zca" else (self._solve()["k"],)

    def _applied(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offset (D,), matrix (D, k))`` with ``z = (x - offset) @ matrix`` on the pixels as stored.

        The 0-1 scale and the std are folded into the matrix's rows
        (``diag(1 / (max_value * std)) @ W``), so whitening a batch is one
        subtraction fused with the conversion to float64, and one product.
        """
        s = self._solved
        if "applied" not in s:
            c = self.image_shape_[-1]
            top = float(self.max_value_) if self.unit else 1.0
            std = np.ones(c) if s["std"] is None else np.where(s["std"] == 0, 1.0, s["std"])
            reps = int(np.prod(self.image_shape_[:-1]))
            offset = np.tile(s["mean"] * top, reps)
            matrix = s["matrix"] if self.method == "zca" else s["matrix"].T
            fold = np.tile(top * std, reps)
            if (fold != 1.0).any():  # else the matrix as it is: no second D x D copy
                matrix = matrix / fold[:, None]
            s["applied"] = (offset, np.ascontiguousarray(matrix))
        return s["applied"]

    def transform(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Whiten images ``x`` (n, height, width, channels): (n, height, width, channels) for ZCA,
        (n, components) for PCA; computed in float64, rounded once to ``dtype``.

        Rows go through BLAS in blocks of :data:`APPLY_ROWS` (the last padded
        with zeros), so each image's values do not depend on the batch it came in.
        """
        from .workers import blas_on_all_cores

        self._solve()
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape_:
            raise DataError(f"images of shape {x.shape[1:] if x.ndim == 4 else x.shape}, but the Whitener was "
                            f"fitted on {self.image_shape_}")
        offset, matrix = self._applied()
        kind = np.dtype(self.precision)
        if kind != matrix.dtype:
            offset, matrix = offset.astype(kind), matrix.astype(kind)
        n, flat = len(x), x.reshape(len(x), -1)
        out = np.empty((n, matrix.shape[1]), dtype)
        block = np.empty((APPLY_ROWS, flat.shape[1]), kind)
        product = np.empty((APPLY_ROWS, matrix.shape[1]), kind)
        with blas_on_all_cores():
            for i in range(0, n, APPLY_ROWS):
                rows = min(APPLY_ROWS, n - i)
                np.subtract(flat[i:i + rows], offset, out=block[:rows], casting="unsafe")  # converted, one pass
                block[rows:] = 0.0
                np.matmul(block, matrix, out=product)
                out[i:i + rows] = product[:rows]  # rounded once to dtype
        return out.reshape((n,) + self.output_shape(self.image_shape_))

    def transform_batch(self, x: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, int]:
        """:meth:`transform` as the HDF5 writer calls it: ``(values, 0)``."""
        from .transforms import check_writable_dtype
        dtype = check_writable_dtype(np.dtype(dtype).name)
        y = self.transform(x, dtype)
        if dtype == np.float16 and not np.isfinite(y).all():
            raise OptionError("whitened values overflow float16; use --dtype float32", option="--dtype")
        return y, 0

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Images (float64, the pixels' scale) from whitened values; exact up to rounding
        where no component was dropped (PCA ``components``, Keras 3 with N < D)."""
        s = self._solve()
        z = np.asarray(z, dtype=np.float64)
        k = s["k"]
        u = s["eigenvectors"][:, :k]
        roots = 1.0 / self._inverse_roots(s["eigenvalues"][:k], self.n_samples_)
        flat = z.reshape(len(z), -1)
        if self.method == "zca":
            flat = _blocked_product(flat, (u * roots) @ u.T)
        else:
            flat = _blocked_product(flat * roots, u.T)
        c = self.image_shape_[-1]
        flat = flat.reshape(len(z), -1, c)
        if s["std"] is not None:
            flat *= np.where(s["std"] == 0, 1.0, s["std"])
        flat += s["mean"]
        if self.unit:
            flat *= self.max_value_
        return flat.reshape((len(z),) + self.image_shape_)

    # ---------------------------------------------------------------- saving

    def options(self) -> dict:
        return {"method": self.method, "epsilon": self.epsilon, "keras": self.keras,
                "standardize": self.standardize, "components": self.components, "unit": self.unit,
                "precision": self.precision}

    def save(self, path: str | os.PathLike, *, extra: dict | None = None) -> None:
        """Write the fit to one ``.npz``: the sums (mergeable), the decomposition and a JSON header."""
        data = self.to_bytes(extra)  # first: a Whitener that cannot be saved leaves no file behind
        with open(path, "wb") as f:
            f.write(data)

    def to_bytes(self, extra: dict | None = None) -> bytes:
        """What :meth:`save` writes."""
        import io

        self._refuse_frozen()
        s = self._solve()
        head = {"format": FORMAT, "version": VERSION, **self.options(), "n_samples": self.n_samples_,
                "image_shape": list(self.image_shape_), "dtype": self.dtype_.name, "max_value": self.max_value_,
                **(extra or {})}
        arrays = {"header": np.array(json.dumps(head)), "shift": self._shift, "sum": self._sum,
                  "sum_sq": self._sum_sq, "mean": s["mean"], "eigenvalues": s["eigenvalues"],
                  "eigenvectors": s["eigenvectors"]}
        if s["std"] is not None:
            arrays["std"] = s["std"]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike) -> "Whitener":
        """The whitening of an ``imgnorm whiten`` HDF5 file (see :func:`from_hdf5`)."""
        return from_hdf5(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Whitener":
        """A Whitener saved with :meth:`save` (``imgnorm whiten --stats-out``); arrays are never unpickled."""
        from .npz import NpyMember, npz_members

        path = os.fspath(path)
        try:
            members = npz_members(path)
            need = ("header", "shift", "sum", "sum_sq")
            if any(k not in members for k in need):
                raise StatsFileError(f"{show_path(path)}: not a whitening file (needs {', '.join(need)})")
            arrays = {k: NpyMember(path, members[k]).load_all() for k in need}
        except SourceError as e:
            raise StatsFileError(str(e)) from None
        try:
            head = json.loads(str(arrays["header"]))
        except ValueError:
            raise StatsFileError(f"{show_path(path)}: its header is not JSON") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != VERSION:
            raise StatsFileError(f"{show_path(path)}: not an imgnorm whitening file of version {VERSION}")
        w = cls(head["method"], epsilon=head["epsilon"], keras=head["keras"], standardize=head["standardize"],
                components=head["components"], unit=head["unit"], precision=head.get("precision", "float64"))
        shape = tuple(int(v) for v in head["image_shape"])
        d = int(np.prod(shape))
        if arrays["sum"].shape != (d,) or arrays["sum_sq"].shape != (d, d) or arrays["shift"].shape != shape[-1:]:
            raise StatsFileError(f"{show_path(path)}: its arrays do not match image shape {shape}")
        w.image_shape_, w.dtype_, w.max_value_ = shape, np.dtype(head["dtype"]), head["max_value"]
        w.n_samples_ = int(head["n_samples"])
        w._shift, w._sum, w._sum_sq = (arrays[k].astype(np.float64) for k in ("shift", "sum", "sum_sq"))
        w.header_ = head
        return w


def from_hdf5(path: str | os.PathLike) -> Whitener:
    """The whitening an imgnorm HDF5 file was written with, ready to :meth:`~Whitener.transform`
    new images (its sums are not in the file: it cannot be refitted or merged)."""
    import h5py

    from .store import read_h5_info

    path = os.fspath(path)
    info = read_h5_info(path)
    if info["attrs"].get("method") != "whiten":
        raise StatsFileError(f"{show_path(path)} was written by imgnorm {info['attrs'].get('method')}, not "
                             "whiten; use imgnorm.Scaler.from_hdf5")
    o = info["attrs"].get("options") or {}
    w = Whitener(o.get("method", "zca"), epsilon=o.get("epsilon", DEFAULT_EPSILON), keras=o.get("keras", 2),
                 standardize=bool(o.get("standardize")), components=o.get("components"), unit=bool(o.get("unit")),
                 precision=o.get("precision", "float64"))
    with h5py.File(path, "r", locking=False) as f:
        g = f.get("whitening")
        if not isinstance(g, h5py.Group) or any(k not in g for k in ("matrix", "mean", "eigenvalues",
                                                                      "eigenvectors")):
            raise StatsFileError(f"{show_path(path)}: no /whitening group with matrix, mean, eigenvalues, "
                                 "eigenvectors")
        arrays = {k: g[k][...] for k in g}
        shape = tuple(int(v) for v in g.attrs["image_shape"])
    d = int(np.prod(shape))
    m = arrays["matrix"]
    if arrays["eigenvectors"].shape != (d, d) or m.shape[-1] != d or arrays["mean"].shape != shape[-1:]:
        raise StatsFileError(f"{show_path(path)}: /whitening arrays do not match image shape {shape}")
    w.image_shape_, w.n_samples_, w.max_value_ = shape, int(o.get("fitted_on") or 1), o.get("max_value")
    w._solved = {"mean": arrays["mean"], "std": arrays.get("std"), "eigenvalues": arrays["eigenvalues"],
                 "eigenvectors": arrays["eigenvectors"], "matrix": m,
                 "k": m.shape[0] if w.method == "pca" else (d if w.keras == 2 else min(d, w.n_samples_)),
                 "smallest": o.get("smallest_eigenvalue"), "warnings": []}
    w._frozen = True
    return w


def _decompose(held: list) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and eigenvectors (columns; each one's largest entry
    positive, so the same vectors come out on every run) of the symmetric matrix
    ``held.pop(0)``, dropped once decomposed; the vectors are reordered in place,
    without a second D x D copy."""
    eigenvalues, vectors = np.linalg.eigh(held.pop(0))
    eigenvalues = eigenvalues[::-1].copy()
    for row in vectors:  # reverse the columns, one row at a time
        row[:] = row[::-1].copy()
    top = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[top, np.arange(vectors.shape[1])])
    vectors *= np.where(signs == 0, 1.0, signs)
    return eigenvalues, vectors


def _blocked_product(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``a @ m`` in blocks of :data:`APPLY_ROWS` rows (the last padded with zeros): each
    row's values come from the same BLAS call shape, so they do not depend on how rows were batched."""
    from .workers import blas_on_all_cores

    n = len(a)
    out = np.empty((n, m.shape[1]), np.float64)
    block = np.zeros((APPLY_ROWS, a.shape[1]), np.float64)
    with blas_on_all_cores():
        for i in range(0, n, APPLY_ROWS):
            rows = min(APPLY_ROWS, n - i)
            if rows == APPLY_ROWS:
                np.matmul(a[i:i + rows], m, out=out[i:i + rows])
            else:
                block[:rows] = a[i:i + rows]
                block[rows:] = 0.0
                out[i:i + rows] = (block @ m)[:rows]
    return out


# ------------------------------------------------------------ the pipeline: plan, fit, write


def covariance_rows(d: int) -> int:
    """Images per batch of the covariance pass: about 32 MB of float64, enough rows for BLAS
    to run at speed, in whole blocks of the exact float32 products (:data:`EXACT32_ROWS`)."""
    return EXACT32_ROWS * int(min(4, max(1, (32 << 20) // (d * 8) // EXACT32_ROWS)))


def whiten_to_hdf5(source, output: str, whitener: Whitener | None = None, *, fit: str | None = None,
                   splits: list[str] | None = None, fit_split: str | None = None, dtype: str = "float32",
                   layout: str = "nhwc", compression: str = "none", force: bool = False,
                   stats_out: str | None = None, batch_size: int | None = None, workers: int | None = None,
                   on_error: str = "fail", show_progress=False, force_stats: bool = False,
                   max_value: float | None = None, dry_run: bool = False, executor=None) -> dict:
    """Fit ``whitener`` on the fit split of ``source`` (or apply the one saved in ``fit``) and write every split.

    Parameters
    ----------
    whitener : Whitener, optional
        Default ``Whitener()`` (ZCA, epsilon 1e-6, Keras 2's placement).
    fit : str, optional
        A whitening file from ``stats_out`` (``.npz``) to apply instead of fitting.
    stats_out : str, optional
        Also write the fit there (``.npz``: the sums, the decomposition, a JSON header).

    Returns
    -------
    dict
        ``output``, ``rows`` per split, ``shapes``, ``stats`` (the document of the
        data read), ``options``, ``warnings``, ``skipped``, ``bytes``.
    """
    from .outputs import OutputSet
    from .pipeline import _executor

    if fit is not None:
        if whitener is not None:
            raise OptionError("--fit applies a saved whitening; its options come from the file", option="--fit")
        whitener = Whitener.load(fit)
    whitener = whitener or Whitener()
    from .outputs import is_zarr

    if is_zarr(output):  # the /whitening group (matrix, eigenvectors) is laid out for HDF5 only
        raise OptionError("whiten writes HDF5 only (its /whitening group); give -o a .h5 name", option="-o")
    inputs = {"SOURCE": source.path, **({"--fit": fit} if fit else {})}
    with OutputSet(force, inputs=inputs, dry_run=dry_run) as outputs:
        out = outputs.add(output, "-o", seekable=True, what="HDF5 output")
        npz_out = outputs.add(stats_out, "--stats-out", what="the whitening file") if stats_out is not None else None
        plan = plan_whiten(source, whitener, splits, fit_split, dtype, layout, compression, batch_size, on_error,
                           max_value, fitted=fit is not None, force_stats=force_stats)
        if dry_run:
            return {"output": output, "stats_out": stats_out, "dry_run": True, **plan.summary()}
        with executor or _executor(source, plan.read, workers, batch_size) as ex:
            result = _run_whiten(plan, whitener, ex, outputs, out, show_progress, npz_out is not None)
        if npz_out is not None:
            outputs.set_content(npz_out, whitener.to_bytes({"read": source.reading(), "source": source.name,
                                                            "fit_split": result["options"]["fit_split"]}))
        outputs.commit()
    result.update(output=output, stats_out=stats_out, bytes=os.path.getsize(out.target))
    return result


def plan_whiten(source, whitener: Whitener, splits, fit_split, dtype, layout, compression, batch_size, on_error,
                max_value, *, fitted: bool, force_stats: bool = False):
    """The :class:`imgnorm.pipeline.WritePlan` of a whitening run, checked before any pixel is read."""
    from .pipeline import WritePlan, image_shape
    from .formats import check_layout_and_compression
    from .transforms import check_writable_dtype

    out_dtype = check_writable_dtype(dtype)
    check_layout_and_compression(layout, compression)
    names = [source.split(s).name for s in splits] if splits else list(source.splits)
    if fitted and fit_split is not None:
        raise OptionError("--fit applies a saved whitening; it cannot take --fit-split", option="--fit-split")
    fit_name = source.split(fit_split).name if fit_split else source.fit_split
    read = names + ([fit_name] if not fitted and fit_name not in names else [])
    shapes = {name: image_shape(source, source.splits[name], on_error) for name in read}
    first = shapes[read[0]]
    for name, shape in shapes.items():
        if shape != first:
            raise SourceError(f"split {name} holds images of {'x'.join(map(str, shape))}, split {read[0]} of "
                              f"{'x'.join(map(str, first))}; whitening needs one shape: pass --size WxH")
    check_dimension(first, f"{show_path(source.path)}'s images")
    top = max_value if max_value is not None else source.max_value
    if whitener.unit and top is None:
        raise OptionError("--unit on float pixels needs --max-value", option="--max-value")
    if fitted:
        _check_saved_fits(source, whitener, first, force_stats)
    if batch_size is None:  # whole blocks of the whitening product (see APPLY_ROWS): no padded rows
        batch_size = APPLY_ROWS * max(1, (16 << 20) // (int(np.prod(first)) * 8) // APPLY_ROWS)
    return WritePlan(source, names, None if fitted else fit_name, not fitted, shapes, out_dtype, layout,
                     compression, batch_size, on_error, top)


def _check_saved_fits(source, whitener: Whitener, shape: tuple, force_stats: bool) -> None:
    """A saved whitening must be for images of this shape, read this way."""
    if tuple(shape) != whitener.image_shape_:
        raise StatsFileError(f"the whitening was fitted on images of {'x'.join(map(str, whitener.image_shape_))}, "
                             f"{show_path(source.path)} holds {'x'.join(map(str, shape))}; read them alike "
                             "(--size, --color)")
    if source.dtype != whitener.dtype_:
        raise StatsFileError(f"the whitening was fitted on {whitener.dtype_} pixels, {show_path(source.path)} "
                             f"holds {source.dtype}")
    read = whitener.header_.get("read") if isinstance(getattr(whitener, "header_", None), dict) else None
    if isinstance(read, dict) and not force_stats:
        here = source.reading()
        for key, value in read.items():
            if key in here and here[key] != value:
                raise StatsFileError(f"the whitening was fitted on pixels read with {key} {value}, "
                                     f"{show_path(source.path)} is read with {key} {here[key]}; read them alike, "
                                     "or pass --force-stats")


def _run_whiten(plan, whitener: Whitener, ex, outputs, out, show_progress, keep_sums: bool) -> dict:
    """Fit (unless loaded), then write every split and the decomposition into ``out.tmp``."""
    from contextlib import ExitStack

    from .outputs import write_error
    from .pipeline import PixelCache, _WriteState, _write_split
    from .store import H5Writer

    d = int(np.prod(plan.shapes[plan.names[0]]))
    extra = 2 * d * d * 8 + 4 * d * 8  # /whitening: matrix, eigenvectors, eigenvalues, means
    try:
        with ExitStack() as stack:
            cache = stack.enter_context(PixelCache.for_plan(plan, outputs, out))
            outputs.reserve({out.tmp: plan.bound + extra, **({cache.path: plan.cache_bytes} if cache.path else {})})
            state = _WriteState([])
            if plan.fit:
                state.results[plan.fit_split] = fit_whitener(plan, whitener, ex, cache, state.skipped,
                                                             show_progress)
            whitener._solve(consume=not keep_sums)
            with H5Writer(out.tmp, dtype=plan.dtype, layout=plan.layout, compression=plan.compression,
                          reserve_bytes=plan.bound + extra) as writer:
                for name in plan.names:
                    _write_split(plan, whitener, ex, writer, name, cache, state, show_progress)
                if sum(state.rows.values()) == 0:
                    raise SourceError(f"{show_path(plan.source.path)}: no image could be read; nothing was written")
                return _finish_whiten(plan, whitener, writer, state)
    except OSError as e:
        raise write_error(out, e) from None


def fit_whitener(plan, whitener: Whitener, ex, cache, skipped: list, show_progress=False):
    """The fit split's statistics and the whitener's sums, in one pass over its pixels.

    Image folders are decoded by the workers into the pixel cache (the
    statistics pass of every write command); the sums are then taken from
    the cache here, where BLAS has the cores. Arrays are read once, a batch
    ahead in a thread.
    """
    from functools import partial

    from .pipeline import _as_array, _chunk, fit_pass, read_task, shards
    from .stats import RunningStats
    from .workers import ahead, progress

    source, name = plan.source, plan.fit_split
    split, shape = source.splits[name], plan.shapes[name]
    rows = covariance_rows(int(np.prod(shape)))
    if cache.holds(name):
        rs = fit_pass(plan, whitener, ex, cache, skipped, show_progress)
        batches = ((b, None) for b in cache.batches(rows))
    else:
        rs = RunningStats(source.channels, source.dtype)
        tasks = shards(source, [name], rows, parallel=ex.parallel, chunk=_chunk(ex))
        batches = ex.map(partial(read_task, on_error=plan.on_error, with_stats=True), tasks)
    with progress(len(split), f"covariance {name}", show_progress) as bar:
        for batch, part in ahead(batches, lambda bp: bp):
            if part is not None:
                rs.merge(part)
                skipped.extend(batch.skipped)
            whitener.partial_fit(_as_array(batch, shape), plan.max_value)
            bar.update(len(batch) + len(batch.skipped))
    if whitener.n_samples_ == 0:
        raise SourceError(f"{show_path(source.path)}: no image of split {name} could be read")
    return rs


def _finish_whiten(plan, whitener: Whitener, writer, state) -> dict:
    """The stats document, the attributes and ``/whitening`` of the output."""
    from . import __version__
    from .pipeline import _stored, document

    source = plan.source
    s = whitener._solve()
    results = state.results
    doc = document(source, {n: results[n] for n in source.splits if n in results},
                   plan.fit_split if plan.fit_split in results else plan.names[0], state.skipped,
                   max_value=plan.max_value)
    options = {**whitener.options(), "fit_split": plan.fit_split, "fitted_on": whitener.n_samples_,
               "max_value": plan.max_value, "dtype": plan.dtype.name, "layout": plan.layout,
               "compression": plan.compression, "smallest_eigenvalue": s["smallest"], **source.reading()}
    skipped = list(source.skipped) + state.skipped
    writer.set_attrs(stats=json.dumps(doc), class_names=source.class_names, method="whiten", options=options,
                     source=show_path(source.name), imgnorm_version=__version__,
                     skipped=[{"file": f, "reason": r} for f, r in _stored(source, skipped)] or None)
    g = writer.f.create_group("whitening")
    for key in ("matrix", "mean", "eigenvalues", "eigenvectors") + (("std",) if s["std"] is not None else ()):
        g.create_dataset(key, data=s[key])
    g.attrs["method"] = whitener.method
    g.attrs["image_shape"] = list(whitener.image_shape_)
    return {"rows": state.rows, "stats": doc, "warnings": list(s["warnings"]), "skipped": skipped,
            "options": options, "shapes": {n: list(writer.f[n]["x"].shape) for n in plan.names}}
