"""Pure functions that scale a batch of images: normalize, center, standardize.

Every method is ``y = (x - offset) / scale`` computed in float64 and rounded
once to the output dtype, optionally followed by ``clip(y, -1, 1)`` and
``(y + 1) / 2``.  Because float64 has more than twice float32's precision,
``x / 255`` rounded to float32 equals float32 division exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OptionError, StatsFileError

try:  # the optional C accelerator (see _kernels.c); numpy's take() gives identical results
    from ._kernels import lut_apply as _lut_apply
except ImportError:  # pragma: no cover - built without a C compiler
    _lut_apply = None

METHODS = ("normalize", "center", "standardize")
DTYPES = ("float32", "float16", "float64")

# Channel statistics of ImageNet on the 0-1 scale, as torchvision's models use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_writable_dtype(dtype: str) -> np.dtype:
    """The output dtype, one of :data:`DTYPES`."""
    if dtype not in DTYPES:
        raise OptionError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}", option="--dtype")
    return np.dtype(dtype)


@dataclass
class Scaling:
    """What a method does to a pixel: ``(x - offset) / scale``.

    Attributes
    ----------
    offset, scale : ndarray of shape (channels,)
        Float64; ``scale`` is never 0.
    clip_rescale : bool
        Clip to [-1, 1], then map to [0, 1] with ``(v + 1) / 2``.
    warnings : list of str
        What was adjusted, for example a zero std replaced by 1.
    """

    offset: np.ndarray
    scale: np.ndarray
    clip_rescale: bool = False
    warnings: list[str] = field(default_factory=list)
    _luts: dict = field(default_factory=dict, repr=False, compare=False)

    def apply(self, x: np.ndarray, dtype="float32") -> np.ndarray:
        """Scale a batch.

        Parameters
        ----------
        x : ndarray of shape (n, height, width, channels)
        dtype : output dtype

        Returns
        -------
        ndarray of shape (n, height, width, channels) and the given dtype.
        """
        dtype = np.dtype(dtype)
        if x.dtype in (np.uint8, np.uint16) and x.size > (1 << 16):
            # 8- and 16-bit pixels take few values: compute each once and look
            # them up.  The table holds exactly what the direct formula gives.
            table = self._table(x.dtype, dtype)  # (channels, levels)
            channels, levels = x.shape[-1], table.shape[1]
            if _lut_apply is not None and x.flags.c_contiguous:
                out = np.empty(x.shape, dtype)
                _lut_apply(x, x.itemsize, table, levels, channels, out, out.itemsize)
                return out
            if channels == 1:
                return np.take(table[0], x, mode="clip")  # every level is in the table
            # One gather from the flat table, indexed by level + channel * levels,
            # straight into the contiguous output.
            flat = table.reshape(-1)
            offsets = (np.arange(channels) * levels).astype(np.uint32 if x.dtype == np.uint16 else np.uint16)
            out = np.empty(x.shape, dtype)
            rows = max(1, (1 << 20) // max(1, x[0].size))  # take() widens indices to intp: bound that
            for i in range(0, len(x), rows):
                idx = x[i:i + rows].astype(offsets.dtype)
                idx += offsets
                np.take(flat, idx, out=out[i:i + rows], mode="clip")  # "raise" would buffer `out`
            return out
        return self._direct(x, dtype)

    def _direct(self, x: np.ndarray, dtype) -> np.ndarray:
        y = (x.astype(np.float64) - self.offset) / self.scale
        if self.clip_rescale:
            _clip_rescale(y)
        return y.astype(dtype, copy=False)

    def _table(self, in_dtype: np.dtype, dtype: np.dtype) -> np.ndarray:
        """(channels, levels) contiguous table of the scaled value of every pixel level."""
        key = (np.dtype(in_dtype), dtype)
        if key not in self._luts:
            levels = np.arange(np.iinfo(in_dtype).max + 1, dtype=in_dtype)
            self._luts[key] = np.ascontiguousarray(self._direct(levels[:, None], dtype).T)
        return self._luts[key]

    def bound(self, lo: float, hi: float) -> float:
        """The largest absolute output for inputs in [lo, hi]."""
        if self.clip_rescale:
            return 1.0
        return float(np.max(np.maximum(abs((lo - self.offset) / self.scale), abs((hi - self.offset) / self.scale))))


def _safe_scale(scale: np.ndarray, names: list[str], what: str) -> tuple[np.ndarray, list[str]]:
    """Replace zero scales by 1, naming the channels: a constant channel must not divide."""
    scale = np.asarray(scale, dtype=np.float64).copy()
    warns = []
    for c in np.flatnonzero(~(scale > 0)):
        warns.append(f"channel {names[c]} has {what} 0; its scale is 1 (it is only shifted)")
        scale[c] = 1.0
    return scale, warns


def feature_scaling(method: str, fit: dict, *, channels: int, max_value: float | None, per_channel: bool,
                    minmax: bool = False, unit: bool = False, clip_rescale: bool = False, epsilon: float = 0.0,
                    channel_names: list[str] | None = None) -> Scaling:
    """The scaling of a method from fitted statistics (feature-wise).

    Parameters
    ----------
    fit : dict
        A split entry of a stats document (``global`` and ``per_channel``).
    per_channel : bool
        Use per-channel statistics, else the global ones for every channel.
    """
    names = channel_names or [str(c) for c in range(channels)]

    def pick(key):
        try:
            v = fit["per_channel"][key] if per_channel else [fit["global"][key]] * channels
        except KeyError:
            raise StatsFileError(f"the statistics have no {'per-channel' if per_channel else 'global'} {key}; "
                                 "use a document written by `imgnorm stats`") from None
        if len(v) != channels or any(x is None for x in v):
            raise StatsFileError(f"the statistics have {len(v)} channel(s) of {key}, the data has {channels}")
        return np.asarray(v, dtype=np.float64)

    warns: list[str] = []
    if method == "normalize":
        if minmax:
            lo, hi = pick("min"), pick("max")
            scale, warns = _safe_scale(hi - lo, names, "max - min")
            return Scaling(lo, scale, warnings=warns)
        return Scaling(np.zeros(channels), np.full(channels, float(need_max_value(max_value))))
    if method == "center":
        scale = np.full(channels, float(need_max_value(max_value)) if unit else 1.0)
        return Scaling(pick("mean"), scale)
    if method == "standardize":
        std = pick("std")
        if epsilon:
            return Scaling(pick("mean"), std + epsilon, clip_rescale)
        scale, warns = _safe_scale(std, names, "std")
        return Scaling(pick("mean"), scale, clip_rescale, warns)
    raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def need_max_value(max_value):
    if not max_value:
        raise OptionError("float pixels have no natural maximum; pass --max-value", option="--max-value")
    return max_value


def imagenet_fit(channels: int, max_value: float | None) -> dict:
    """ImageNet's channel mean and std, on the scale of the data (times max_value)."""
    if channels != 3:
        raise StatsFileError(f"--stats imagenet is for RGB data; the data has {channels} channel(s)")
    m = float(need_max_value(max_value))
    return {"per_channel": {"mean": [v * m for v in IMAGENET_MEAN], "std": [v * m for v in IMAGENET_STD]}}


def per_image_scaled(x: np.ndarray, method: str, *, max_value: float | None, per_channel: bool,
                     minmax: bool = False, unit: bool = False, clip_rescale: bool = False,
                     epsilon: float = 0.0, dtype="float32") -> tuple[np.ndarray, int]:
    """Sample-wise scaling: each image with its own statistics.

    Parameters
    ----------
    x : ndarray of shape (n, height, width, channels)

    Returns
    -------
    y : ndarray of shape (n, height, width, channels)
    n_flat : int
        Images whose std (or max - min) was 0 somewhere and got scale 1:
        a blank image becomes zeros.
    """
    axes = (1, 2) if per_channel else (1, 2, 3)
    xf = x.astype(np.float64)
    if method == "normalize" and not minmax:
        return Scaling(np.zeros(1), np.array([float(need_max_value(max_value))])).apply(x, dtype), 0
    if method == "normalize":
        offset = xf.min(axis=axes, keepdims=True)
        spread = xf.max(axis=axes, keepdims=True) - offset
    else:
        offset = xf.mean(axis=axes, keepdims=True)
        if method == "center":
            spread = np.full_like(offset, float(need_max_value(max_value)) if unit else 1.0)
        else:
            spread = np.sqrt(((xf - offset) ** 2).mean(axis=axes, keepdims=True))
    flat = ~(spread > 0)
    n_flat = int(flat.reshape(len(x), -1).any(axis=1).sum())
    scale = spread + epsilon if (epsilon and method == "standardize") else np.where(flat, 1.0, spread)
    y = (xf - offset) / scale
    if clip_rescale and method == "standardize":
        _clip_rescale(y)
    return y.astype(dtype, copy=False), n_flat


def _clip_rescale(y: np.ndarray) -> None:
    """In place: clip to [-1, 1], then map to [0, 1] with (v + 1) / 2."""
    np.clip(y, -1.0, 1.0, out=y)
    y += 1.0
    y /= 2.0
