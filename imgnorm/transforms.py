"""Scaling pixels: the :class:`Scaler` estimator and the functions under it.

Every method is ``y = (x - offset) / scale`` computed in float64 and rounded
once to the output dtype, optionally followed by ``clip(y, -1, 1)`` and
``(y + 1) / 2``.  Because float64 has more than twice float32's precision,
``x / 255`` rounded to float32 equals float32 division exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, OptionError, StatsFileError
from .formats import METHODS

try:  # the optional C accelerator (see _kernels.c); numpy's take() gives identical results
    from ._kernels import lut_apply as _lut_apply
except ImportError:  # pragma: no cover - built without a C compiler
    _lut_apply = None

DTYPES = ("float32", "float16", "float64")
CHANNEL_ORDERS = ("rgb", "bgr")

# Channel statistics of ImageNet on the 0-1 scale, as torchvision's models use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Known constants on the 0-1 scale, RGB order: (mean, std) per channel.
PRESETS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    # OpenAI CLIP's image preprocessing (clip/clip.py, _transform)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # Inception / Keras' "tf" preprocessing: x / 127.5 - 1, i.e. mean 0.5, std 0.5: [-1, 1]
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Keras' "caffe" preprocessing (VGG, ResNet50): the ImageNet mean in 0..255 subtracted,
    # no division (std 1/255); use with --channel-order bgr
    "caffe": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255, 1 / 255, 1 / 255)),
}


def check_writable_dtype(dtype: str) -> np.dtype:
    """The output dtype, one of :data:`DTYPES`."""
    if dtype not in DTYPES:
        raise OptionError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}", option="--dtype")
    return np.dtype(dtype)


@dataclass
class Scaling:
    """What a method does to a pixel: ``(x - offset) / scale``, or with a
    ``divisor``, ``(x / divisor - offset) / scale`` (torchvision's
    ``Normalize`` of ``ToTensor()``: constants given on the 0-1 scale).

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
    divisor: float | None = None
    clip_lo: np.ndarray | None = None  # per channel: pixels are clipped to [clip_lo, clip_hi] first
    clip_hi: np.ndarray | None = None

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
        xf = x.astype(np.float64)
        if self.clip_lo is not None:
            xf = np.clip(xf, self.clip_lo, self.clip_hi)  # broadcasts: a table's (levels, 1) becomes per channel
        if self.divisor is not None:
            xf /= self.divisor
        y = (xf - self.offset) / self.scale
        if self.clip_rescale:
            _clip_rescale(y)
        with np.errstate(over="ignore"):  # float16 overflow: Scaler.transform_batch checks and says so
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
        if self.clip_lo is not None:
            lo, hi = np.clip(lo, self.clip_lo, self.clip_hi), np.clip(hi, self.clip_lo, self.clip_hi)
        if self.divisor is not None:
            lo, hi = lo / self.divisor, hi / self.divisor
        return float(np.max(np.maximum(abs((lo - self.offset) / self.scale), abs((hi - self.offset) / self.scale))))

    @property
    def data_offset(self) -> np.ndarray:
        """The offset on the pixels' own scale (``offset * divisor``)."""
        return self.offset * self.divisor if self.divisor is not None else self.offset

    @property
    def data_scale(self) -> np.ndarray:
        """The scale on the pixels' own scale (``scale * divisor``)."""
        return self.scale * self.divisor if self.divisor is not None else self.scale


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


def per_image_scaled(x: np.ndarray, method: str, *, max_value: float | None, per_channel: bool,
                     minmax: bool = False, unit: bool = False, clip_rescale: bool = False,
                     epsilon: float = 0.0, dtype="float32", robust: bool = False,
                     clip_percentiles=None) -> tuple[np.ndarray, int]:
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
    if method == "normalize" and not minmax and not clip_percentiles:
        return Scaling(np.zeros(1), np.array([float(need_max_value(max_value))])).apply(x, dtype), 0
    if clip_percentiles:  # each image's own percentiles (numpy's, on its pixels)
        lo, hi = np.percentile(x, clip_percentiles, axis=axes, keepdims=True)
        xf = np.clip(xf, lo, hi)
    if method == "normalize" and clip_percentiles:
        offset, spread = lo, hi - lo
    elif method == "normalize":
        offset = xf.min(axis=axes, keepdims=True)
        spread = xf.max(axis=axes, keepdims=True) - offset
    elif robust:
        offset = np.median(xf, axis=axes, keepdims=True)
        q25, q75 = np.percentile(xf, [25, 75], axis=axes, keepdims=True)
        spread = q75 - q25
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
    with np.errstate(over="ignore"):  # float16 overflow: Scaler.transform_batch checks and says so
        return y.astype(dtype, copy=False), n_flat


def _clip_rescale(y: np.ndarray) -> None:
    """In place: clip to [-1, 1], then map to [0, 1] with (v + 1) / 2."""
    np.clip(y, -1.0, 1.0, out=y)
    y += 1.0
    y /= 2.0


# ------------------------------------------------------------ the estimator

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class Scaler:
    """Scale image pixels exactly as imgnorm's commands do: fit, save, reload, transform.

    Modelled on scikit-learn's scalers: options are fixed and checked here,
    :meth:`fit` is a reset plus :meth:`partial_fit`, fitted state carries a
    trailing underscore, :meth:`transform` reads only fitted state. Integer
    pixels (uint8, uint16) are summed exactly, so fitting in any batches, or
    merging fits of disjoint parts, gives bit-identical statistics; float
    pixels are merged with Chan, Golub and LeVeque's update (1e-12 relative).
    The values :meth:`transform` gives are bit for bit those the command line
    writes for the same pixels and options.

    Parameters
    ----------
    method : {"normalize", "center", "standardize"}
        ``x / max_value`` (or min-max), ``x - mean``, ``(x - mean) / std``.
    per_channel : bool
        Statistics per channel, else of all channels pooled.
    per_image : bool
        Sample-wise: each image is scaled with its own statistics (nothing to fit).
    minmax : bool
        normalize: ``(x - min) / (max - min)`` instead of ``x / max_value``.
    unit : bool
        center: ``(x - mean) / max_value``, centred on the 0-1 scale.
    clip_rescale : bool
        standardize: then ``clip(v, -1, 1)`` and ``(v + 1) / 2``.
    epsilon : float, optional
        standardize: divide by ``std + epsilon`` (Keras adds 1e-6); without it a
        zero std gets scale 1 instead of dividing.
    max_value : float, optional
        The pixels' maximum; default: 255 for uint8, 65535 for uint16. Needed
        for float pixels by normalize and ``center(unit=True)``.
    robust : bool
        standardize: ``(x - median) / IQR`` (scikit-learn's ``RobustScaler``
        with the 25-75 quantile range) instead of mean and std.
    clip_percentiles : (lo, hi), optional
        Clip the pixels to the fit split's ``lo`` and ``hi`` percentiles first
        (nnU-Net's 0.5, 99.5): normalize then maps them to 0..1, center and
        standardize use the statistics of the clipped pixels. Percentiles,
        medians and the clipped statistics are exact (from the histogram of
        8- or 16-bit pixels), per channel with ``per_channel``.

    Attributes
    ----------
    stats_ : RunningStats
        Sufficient statistics of the pixels seen (exact sums for integers).
    n_images_, n_pixels_ : int
        Images and pixels per channel seen.
    n_channels_ : int
        Channels (1 for ``(N, H, W)`` input).
    mean_, std_, min_, max_ : ndarray of shape (n_channels_,)
        The statistics applied: per channel, or the global value repeated
        for every channel.
    offset_, scale_ : ndarray of shape (n_channels_,)
        What is applied: ``y = (x - offset_) / scale_`` (then the clip and
        rescale of ``clip_rescale``). A zero std or spread gets scale 1.
    max_value_ : float or None

    Examples
    --------
    >>> scaler = Scaler("standardize", per_channel=True)
    >>> for batch in batches:                  # (n, h, w, c) uint8
    ...     scaler.partial_fit(batch)
    >>> y = scaler.transform(batch)            # float32, what the CLI writes
    >>> doc = scaler.to_stats(); Scaler.from_stats(doc)   # save, reload
    """

    def __init__(self, method: str = "standardize", *, per_channel: bool = False, per_image: bool = False,
                 minmax: bool = False, unit: bool = False, clip_rescale: bool = False,
                 epsilon: float | None = None, max_value: float | None = None, robust: bool = False,
                 clip_percentiles: tuple[float, float] | None = None):
        check_options(method, minmax=minmax, unit=unit, clip_rescale=clip_rescale, epsilon=epsilon,
                      max_value=max_value, robust=robust, clip_percentiles=clip_percentiles)
        self.method = method
        self.per_channel = bool(per_channel)
        self.per_image = bool(per_image)
        self.minmax = bool(minmax)
        self.unit = bool(unit)
        self.clip_rescale = bool(clip_rescale)
        self.epsilon = None if epsilon is None else float(epsilon)
        self.max_value = None if max_value is None else float(max_value)
        self.robust = bool(robust)
        self.clip_percentiles = None if clip_percentiles is None else tuple(float(v) for v in clip_percentiles)
        self.channel_names: list[str] | None = None  # for warnings; the pipeline names them R, G, B...
        self._reset()

    def _reset(self) -> None:
        self.stats_ = None  # RunningStats of the pixels fitted on
        self._preset: str | None = None  # the name of known constants
        self._constants: tuple | None = None  # (mean, std) on the 0-1 scale, in the data's channel order
        self._channel_order = "rgb"  # of the data the constants apply to (they are given in RGB order)
        self._doc: dict | None = None  # the stats document this scaler was loaded from
        self._shape3 = False  # fitted on (N, H, W): 3-D input is a batch of one-channel images
        self._scalings: dict = {}

    # ------------------------------------------------------------ options

    def get_params(self) -> dict:
        """The constructor's options, as scikit-learn's ``get_params``."""
        return {"method": self.method, "per_channel": self.per_channel, "per_image": self.per_image,
                "minmax": self.minmax, "unit": self.unit, "clip_rescale": self.clip_rescale,
                "epsilon": self.epsilon, "max_value": self.max_value, "robust": self.robust,
                "clip_percentiles": self.clip_percentiles}

    def __repr__(self) -> str:
        defaults = Scaler().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        if self._constants:  # always per channel: not an option there
            changed.pop("per_channel", None)
            args = [f"{k}={v!r}" for k, v in changed.items()]
            if self._preset:
                return f"Scaler.preset({', '.join([repr(self._preset)] + args)})"
            if self._channel_order != "rgb":
                args.append(f"channel_order={self._channel_order!r}")
            mean, std = self._given_constants()
            return f"Scaler.from_constants({', '.join([repr(list(mean)), repr(list(std))] + args)})"
        changed.pop("method", None)
        return f"Scaler({', '.join([repr(self.method)] + [f'{k}={v!r}' for k, v in changed.items()])})"

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`transform` needs statistics that have not been fitted or loaded."""
        if self.per_image or (self.method == "normalize" and not self.minmax and not self.clip_percentiles):
            return False
        return self._constants is None and self.stats_ is None and self._doc is None

    # ------------------------------------------------------------ fitting

    def partial_fit(self, x: np.ndarray) -> "Scaler":
        """Add a batch of images to the statistics.

        Parameters
        ----------
        x : ndarray of shape (n_images, height, width, channels) or (n_images, height, width)
            uint8, uint16 or float pixels; every batch of one fit has the same
            type and channel count (image sizes may differ between batches).
        """
        from .stats import RunningStats

        if self._constants is not None or self._doc is not None:
            raise DataError("this Scaler holds loaded statistics; make a new Scaler to fit on data")
        x = np.asarray(x)
        if x.ndim == 3:
            x4, shape3 = x[..., None], True
        elif x.ndim == 4:
            x4, shape3 = x, False
        else:
            raise DataError(f"expected images of shape (n, height, width, channels) or (n, height, width), got "
                            f"{x.shape}")
        _check_pixels(x4)
        if self.stats_ is None:
            self.stats_ = RunningStats(x4.shape[-1], x4.dtype)
            self._shape3 = shape3
        elif (x4.shape[-1], x4.dtype) != (self.stats_.channels, self.stats_.dtype):
            raise DataError(f"this batch has {x4.shape[-1]} channel(s) of {x4.dtype}; the Scaler was fitted on "
                            f"{self.stats_.channels} of {self.stats_.dtype}")
        self.stats_.update(np.ascontiguousarray(x4))
        self._scalings = {}
        return self

    def fit(self, x: np.ndarray) -> "Scaler":
        """Forget what was fitted, then :meth:`partial_fit` ``x``."""
        self._reset()
        return self.partial_fit(x)

    def merge(self, other: "Scaler") -> "Scaler":
        """Fold in a Scaler of the same options fitted on disjoint data (another worker, shard or file)."""
        if other.get_params() != self.get_params():
            raise DataError(f"cannot merge {other!r} into {self!r}: their options differ")
        if other.stats_ is None:
            return self
        if self.stats_ is None:
            self.stats_ = type(other.stats_).from_dict(other.stats_.to_dict())
            self._shape3 = other._shape3
        else:
            try:
                self.stats_.merge(other.stats_)
            except ValueError as e:
                raise DataError(str(e)) from None
        self._scalings = {}
        return self

    def fit_stats(self, stats) -> "Scaler":
        """Take fitted statistics: a :class:`RunningStats`, or a split entry of a stats document."""
        from .stats import RunningStats

        self._reset()
        self.stats_ = stats if isinstance(stats, RunningStats) else RunningStats.from_dict(stats)
        return self

    # ------------------------------------------------------------ loading and saving

    @classmethod
    def from_stats(cls, doc: dict, *, split: str | None = None, **options) -> "Scaler":
        """A fitted Scaler from a stats document (``imgnorm stats -o``, :meth:`to_stats`).

        Parameters
        ----------
        doc : dict
            The document (read with :func:`imgnorm.read_stats_document`).
        split : str, optional
            Whose statistics to apply; default: the document's ``fit_split``.
        **options
            As in the constructor, ``method`` included; options not given are
            taken from the document when it records them (:meth:`to_stats`
            does), else the constructor's defaults.
        """
        from .stats import check_stats_document

        doc = check_stats_document(doc)
        saved = doc.get("scaler") if isinstance(doc.get("scaler"), dict) else {}
        params = {k: v for k, v in saved.items() if k in Scaler().get_params()}
        params.update(options)
        if params.get("per_image"):
            raise OptionError("--per-image uses each image's own statistics; it cannot take --stats")
        self = cls(**params)
        name = doc["fit_split"] if split is None else split
        if name not in doc["splits"]:
            raise StatsFileError(f"the stats document has no split {name!r}; it has {', '.join(doc['splits'])}")
        if is_constants(doc):
            entry = doc["splits"][name]
            unit = entry.get("unit_scale") if isinstance(entry.get("unit_scale"), dict) else None
            if unit is not None:  # written by imgnorm: the constants exactly as given
                mean, std = unit["mean"], unit["std"]
            else:  # an older document: back from the pixel scale
                mv = float(need_max_value(doc.get("max_value")))
                mean = [v / mv for v in entry["per_channel"]["mean"]]
                std = [v / mv for v in entry["per_channel"]["std"]]
            self.per_channel = True
            self._constants = (tuple(mean), tuple(std))
            self._channel_order = doc.get("channel_order", "rgb")
        else:
            self.fit_stats(doc["splits"][name])
        self._doc = doc if name == doc["fit_split"] else dict(doc, fit_split=name)
        return self

    @classmethod
    def from_hdf5(cls, path: str) -> "Scaler":
        """The Scaler an imgnorm HDF5 file (or Zarr store) was written with (its ``method``,
        ``options`` and ``stats`` attributes): its :meth:`transform` gives new
        images exactly the values the file holds for its own."""
        from .readback import read_output_info

        attrs = read_output_info(path)["attrs"]
        opts = attrs.get("options") or {}
        params = {k: opts[k] for k in ("per_channel", "per_image", "minmax", "unit", "clip_rescale", "robust")
                  if isinstance(opts.get(k), bool)}
        params["epsilon"] = opts.get("epsilon") or None
        params["clip_percentiles"] = opts.get("clip_percentiles")
        method = attrs.get("method", "standardize")
        if params.get("per_image") or attrs.get("stats") is None:
            return cls(method, max_value=opts.get("max_value"), **params)
        preset = opts.get("stats") if opts.get("stats") in PRESETS else None
        if preset:
            return cls.preset(preset, method=method, max_value=opts.get("max_value"),
                              **{k: v for k, v in params.items() if k != "per_channel"})
        return cls.from_stats(attrs["stats"], method=method, **params)

    @classmethod
    def preset(cls, name: str, **options) -> "Scaler":
        """Known constants (on the 0-1 scale, like torchvision's ``Normalize``): ``imagenet``, ``clip``,
        ``inception`` (mean 0.5, std 0.5: values in [-1, 1]). Always per channel, RGB order."""
        if name not in PRESETS:
            raise OptionError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}", option="--stats")
        if options.get("per_image"):
            raise OptionError("--per-image uses each image's own statistics; it cannot take --stats")
        self = cls.from_constants(*PRESETS[name], **options)
        self._preset = name
        return self

    @classmethod
    def from_constants(cls, mean, std, *, channel_order: str = "rgb", **options) -> "Scaler":
        """Given per-channel ``mean`` and ``std`` on the 0-1 scale, in RGB order, as
        torchvision's ``Normalize`` takes them; always per channel.

        The values are ``(x / max_value - mean) / std`` computed in float64 and
        rounded once: bit for bit ``Normalize`` of ``ToTensor()`` done in float64.
        One value applies to every channel. ``channel_order="bgr"``: the data's
        channels are in BGR order (``--channel-order bgr``), and the constants
        follow them.
        """
        if channel_order not in CHANNEL_ORDERS:
            raise OptionError(f"channel order {channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}",
                              option="--channel-order")
        if options.get("per_image"):
            raise OptionError("--per-image uses each image's own statistics; it cannot take --mean/--std")
        if options.get("robust") or options.get("clip_percentiles"):
            raise OptionError("--robust and --clip-percentiles come from the data's percentiles; constants give a "
                              "mean and std", option="--robust" if options.get("robust") else "--clip-percentiles")
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != len(std) or not mean:
            raise OptionError(f"--mean has {len(mean)} value(s) and --std {len(std)}; give one per channel",
                              option="--std")
        if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
            raise OptionError("--mean must be finite numbers and --std finite numbers > 0", option="--std")
        self = cls(**options)
        if self.method == "normalize" and self.minmax:
            raise OptionError("--minmax needs fitted minima and maxima; constants give a mean and std")
        self.per_channel = True
        order = slice(None, None, -1) if channel_order == "bgr" else slice(None)
        self._constants = (mean[order], std[order])
        self._channel_order = channel_order
        return self

    def _given_constants(self) -> tuple:
        """The constants in RGB order, as they were given."""
        order = slice(None, None, -1) if self._channel_order == "bgr" else slice(None)
        return self._constants[0][order], self._constants[1][order]

    def to_stats(self, max_value: float | None = None) -> dict:
        """The stats document of what this Scaler applies, with its options under ``"scaler"``.

        :meth:`from_stats` on it (after a JSON round trip too) gives the same transform.
        """
        from .stats import stats_document

        if self._constants is not None:
            doc = self._constants_document(self._max_value_for(None) if max_value is None else max_value)
        elif self._doc is not None:
            doc = dict(self._doc)
        elif self.stats_ is not None:
            doc = stats_document(source="arrays", color="keep", channels=self.stats_.channels,
                                 max_value=self._max_value_for(self.stats_.dtype), splits={"fit": self.stats_},
                                 fit_split="fit")
        else:
            raise DataError(f"{self!r} has not been fitted; call fit() or partial_fit() first")
        doc["scaler"] = self.get_params()
        return doc

    def applied_document(self, max_value: float | None = None) -> dict | None:
        """The stats document of loaded statistics or a preset, as it was given; None when fitted here."""
        if self._constants is not None:
            return self._constants_document(max_value if max_value is not None else self._max_value_for(None))
        return self._doc

    def _constants_document(self, max_value) -> dict:
        name = self._preset or "constants"
        channels = len(self._constants[0])
        doc = {"format": "imgnorm.stats", "version": 1, "source": name,
               "color": "rgb" if channels == 3 else "keep", "channels": channels, "max_value": max_value,
               "fit_split": name, "splits": {name: self._constants_fit(channels, max_value)}}
        if self._channel_order != "rgb":
            doc["channel_order"] = self._channel_order
        return doc

    def _constants_fit(self, channels: int | None, max_value) -> dict:
        """The constants as a split entry: on the pixels' scale (times max_value), and as given."""
        mean, std = self._constants
        if channels is not None and len(mean) == 1 and channels > 1:  # one value for every channel
            mean, std = mean * channels, std * channels
        if channels is not None and channels != len(mean):
            if self._preset:
                raise StatsFileError(f"--stats {self._preset} is for RGB data; the data has {channels} channel(s)")
            raise StatsFileError(f"--mean/--std give {len(mean)} channel(s); the data has {channels}")
        m = float(need_max_value(max_value))
        return {"per_channel": {"mean": [v * m for v in mean], "std": [v * m for v in std]},
                "unit_scale": {"mean": list(mean), "std": list(std)}}

    def _constants_scaling(self, dtype, channels: int) -> Scaling:
        """The Normalize formula: ``(x / max_value - mean) / std`` per channel, in float64."""
        entry = self._constants_fit(channels, self._max_value_for(dtype))
        mean, std = (np.array(entry["unit_scale"][k], dtype=np.float64) for k in ("mean", "std"))
        m = float(self._max_value_for(dtype))
        if self.method == "normalize":
            return Scaling(np.zeros(channels), np.full(channels, m))
        if self.method == "center":
            return Scaling(mean, np.ones(channels), divisor=m) if self.unit else \
                Scaling(np.array(entry["per_channel"]["mean"]), np.ones(channels))
        return Scaling(mean, std + (self.epsilon or 0.0) / m, self.clip_rescale, divisor=m)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_scalings"] = {}  # lookup tables are rebuilt on demand
        return state

    # ------------------------------------------------------------ fitted attributes

    def _entry(self) -> dict:
        if self.stats_ is None:
            raise DataError(f"{self!r} has not been fitted; call fit() or partial_fit() first")
        return self.stats_.to_dict()

    def _stat(self, key: str) -> np.ndarray:
        if key in ("mean", "std") and self._constants is not None:
            return np.array(self._constants_fit(None, self.max_value_)["per_channel"][key], dtype=np.float64)
        e = self._entry()
        c = self.stats_.channels
        v = e["per_channel"][key] if self.per_channel else [e["global"][key]] * c
        return np.array([np.nan if a is None else a for a in v], dtype=np.float64)

    mean_ = property(lambda self: self._stat("mean"), doc="Mean applied, shape (n_channels_,).")
    std_ = property(lambda self: self._stat("std"), doc="Population std applied, shape (n_channels_,).")
    min_ = property(lambda self: self._stat("min"), doc="Minimum, shape (n_channels_,).")
    max_ = property(lambda self: self._stat("max"), doc="Maximum, shape (n_channels_,).")
    n_images_ = property(lambda self: self._entry()["images"], doc="Images fitted on.")
    n_pixels_ = property(lambda self: self._entry()["pixels"], doc="Pixels per channel fitted on.")

    @property
    def n_channels_(self) -> int:
        if self.stats_ is not None:
            return self.stats_.channels
        if self._constants is not None:
            return len(self._constants[0])
        if self._doc is not None:
            return self._doc["channels"]
        raise DataError(f"{self!r} has not been fitted; call fit() or partial_fit() first")

    def _fixed_channels(self) -> int | None:
        """The channel count the fitted or given statistics fix, or None (any: one value for all)."""
        if self.stats_ is not None:
            return self.stats_.channels
        if self._constants is not None:
            return len(self._constants[0]) if len(self._constants[0]) > 1 else None
        return self._doc["channels"] if self._doc is not None else None

    @property
    def max_value_(self) -> float | None:
        return self._max_value_for(self.stats_.dtype if self.stats_ is not None else None)

    @property
    def offset_(self) -> np.ndarray:
        """``y = (x - offset_) / scale_`` on the pixels' scale, shape (n_channels_,)."""
        return self.scaling().data_offset.copy()

    @property
    def scale_(self) -> np.ndarray:
        return self.scaling().data_scale.copy()

    def _max_value_for(self, dtype) -> float | None:
        if self.max_value is not None:
            return self.max_value
        if self._doc is not None and self._doc.get("max_value"):
            return self._doc["max_value"]
        natural = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
        return natural.get(np.dtype(dtype)) if dtype is not None else (255 if self._constants else None)

    def _percentile_scaling(self, dtype, channels: int) -> Scaling:
        """The scaling of ``robust`` / ``clip_percentiles``, exact from the fit split's histogram."""
        from .stats import percentile_fit

        rs = self.stats_
        if rs is None or rs.hist_ is None:
            what = "--robust" if self.robust else "--clip-percentiles"
            raise DataError(f"{what} needs exact percentiles: fit on 8- or 16-bit pixels (float pixels and version "
                            "1 stats documents have no histogram)")
        rows = rs.hist_ if self.per_channel else rs.hist_.sum(axis=0, keepdims=True)
        fits = [percentile_fit(h, rs.dtype, self.clip_percentiles) for h in rows]
        pick = lambda key: np.array([f[key] for f in fits] * (1 if self.per_channel else channels))
        names = self.channel_names or [str(c) for c in range(channels)]
        lo, hi = (pick("lo"), pick("hi")) if self.clip_percentiles else (None, None)
        if self.method == "normalize":
            scale, warns = _safe_scale(hi - lo, names, "percentile range")
            return Scaling(lo, scale, warnings=warns, clip_lo=lo, clip_hi=hi)
        if self.method == "center":
            m = float(need_max_value(self._max_value_for(dtype))) if self.unit else 1.0
            return Scaling(pick("mean"), np.full(channels, m), clip_lo=lo, clip_hi=hi)
        offset, spread, what = (pick("median"), pick("iqr"), "IQR") if self.robust else \
            (pick("mean"), pick("std"), "std")
        if self.epsilon:
            return Scaling(offset, spread + self.epsilon, self.clip_rescale, clip_lo=lo, clip_hi=hi)
        scale, warns = _safe_scale(spread, names, what)
        return Scaling(offset, scale, self.clip_rescale, warns, clip_lo=lo, clip_hi=hi)

    def _fit_entry(self) -> dict:
        """The statistics the scaling is made from: a stats document's split entry, or {} for none."""
        if self.method == "normalize" and not self.minmax:
            return {}
        return self._entry()

    def scaling(self, dtype=None, channels: int | None = None) -> Scaling:
        """The :class:`Scaling` this Scaler applies to ``channels`` channels of ``dtype`` pixels
        (feature-wise only; default: those it was fitted on)."""
        if self.per_image:
            raise DataError("per-image scaling has no fixed offset and scale: each image uses its own")
        dtype = np.dtype(dtype) if dtype is not None else (self.stats_.dtype if self.stats_ is not None else None)
        channels = self._fixed_channels() or channels
        key = (None if dtype is None else dtype.str, channels or 1)
        if key not in self._scalings and self._constants is not None:
            self._scalings[key] = self._constants_scaling(dtype, channels or 1)
        if key not in self._scalings and (self.robust or self.clip_percentiles):
            self._scalings[key] = self._percentile_scaling(dtype, channels or 1)
        if key not in self._scalings:
            max_value = self._max_value_for(dtype)
            channels = channels or 1
            fit = self._fit_entry()
            self._scalings[key] = feature_scaling(
                self.method, fit, channels=channels, max_value=max_value, per_channel=self.per_channel,
                minmax=self.minmax, unit=self.unit, clip_rescale=self.clip_rescale, epsilon=self.epsilon or 0.0,
                channel_names=self.channel_names)
        return self._scalings[key]

    # ------------------------------------------------------------ transforming

    def transform(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Scale a batch ``(n, height, width, channels)`` or ``(n, height, width)``, or one image
        ``(height, width, channels)`` / ``(height, width)``; the result has the same shape.

        Values are computed in float64 and rounded once to ``dtype``.
        """
        x4, restore = self._as_batch(np.asarray(x))
        y, _ = self.transform_batch(x4, dtype)
        return restore(y)

    def output_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """What one image becomes: scaling keeps its shape."""
        return tuple(image_shape)

    def transform_batch(self, x: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, int]:
        """Scale ``x`` of shape (n, height, width, channels); also returns how many images had
        a zero std or spread (per-image scaling gives those scale 1)."""
        dtype = check_writable_dtype(np.dtype(dtype).name)
        _check_pixels(x)
        if self.per_image:
            y, n_flat = per_image_scaled(x, self.method, max_value=self._max_value_for(x.dtype),
                                         per_channel=self.per_channel, minmax=self.minmax, unit=self.unit,
                                         clip_rescale=self.clip_rescale, epsilon=self.epsilon or 0.0, dtype=dtype,
                                         robust=self.robust, clip_percentiles=self.clip_percentiles)
        else:
            scaling = self.scaling(x.dtype, x.shape[-1])
            if len(scaling.offset) != x.shape[-1]:
                raise DataError(f"the images have {x.shape[-1]} channel(s); this Scaler applies "
                                f"{len(scaling.offset)}")
            y, n_flat = scaling.apply(x, dtype), 0
        if dtype == np.float16 and x.dtype.kind == "f" and not np.isfinite(y).all():
            raise OptionError("values overflow float16; use --dtype float32", option="--dtype")
        return y, n_flat

    def check_float16(self, in_dtype) -> None:
        """Refuse float16 output that values of integer pixels could overflow, before any is written."""
        in_dtype = np.dtype(in_dtype)
        if in_dtype.kind not in "ui":
            return  # float pixels have no natural range: checked batch by batch
        top = float(np.iinfo(in_dtype).max)
        if self.per_image:
            if self.method == "center" and not self.unit:
                bound = top
            elif self.method == "normalize" and not self.minmax:
                bound = top / self._max_value_for(in_dtype)
            else:
                return  # a standard score or a min-max of one image's own pixels
        elif self.needs_fit:
            return  # checked once fitted
        else:
            bound = self.scaling(in_dtype).bound(0.0, top)
        if bound > _FLOAT16_MAX:
            raise OptionError(f"values up to {bound:g} overflow float16; use --dtype float32", option="--dtype")

    def fit_transform(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        """:meth:`fit` on ``x``, then :meth:`transform` it."""
        return self.fit(x).transform(x, dtype)

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        """Back to the pixel scale, in float64: ``y * scale_ + offset_``.

        With ``clip_rescale``, values that were clipped come back as the clip
        bound. Per-image scaling cannot be inverted (the images' own
        statistics are not kept).
        """
        if self.per_image:
            raise DataError("per-image scaling cannot be inverted: each image's own statistics are not kept")
        y = np.asarray(y, dtype=np.float64)
        y4, restore = self._as_batch(y)
        s = self.scaling(self.stats_.dtype if self.stats_ is not None else None, y4.shape[-1])
        v = y4 * 2.0 - 1.0 if s.clip_rescale else y4
        x = v * s.scale + s.offset
        return restore(x * s.divisor if s.divisor is not None else x)

    def _as_batch(self, x: np.ndarray):
        """``x`` as (n, height, width, channels), and how to give a result the shape of ``x``."""
        channels = self._fixed_channels()
        if x.ndim == 4:
            return x, lambda y: y
        if x.ndim == 2:
            return x[None, :, :, None], lambda y: y[0, :, :, 0]
        if x.ndim == 3:
            one_image = (not self._shape3 and x.shape[-1] == channels) if channels is not None \
                else x.shape[-1] <= 4
            if one_image:
                return x[None], lambda y: y[0]
            return x[..., None], lambda y: y[..., 0]
        raise DataError(f"expected images of shape (n, height, width, channels), (n, height, width), "
                        f"(height, width, channels) or (height, width); got {x.shape}")


def is_constants(doc: dict | None) -> bool:
    """Whether a stats document gives constants (a preset, --mean/--std): entries
    with a per-channel mean and std and no sums to merge."""
    return bool(doc) and all("sums" not in e for e in doc["splits"].values())


def _check_pixels(x: np.ndarray) -> None:
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise DataError(f"pixels of dtype {x.dtype} are not numbers")
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        raise DataError("the pixels hold NaN or infinity")
    if x.ndim == 4 and 0 in x.shape[1:]:
        raise DataError(f"images of shape {x.shape[1:]} hold no pixels")


def check_options(method: str, *, minmax: bool = False, unit: bool = False, clip_rescale: bool = False,
                  epsilon: float | None = None, max_value: float | None = None, robust: bool = False,
                  clip_percentiles=None) -> None:
    """The checks of :class:`Scaler`'s options (also the CLI's, before any work)."""
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    for flag, ok, name in ((minmax, method == "normalize", "--minmax"), (unit, method == "center", "--unit"),
                           (clip_rescale, method == "standardize", "--clip-rescale"),
                           (epsilon, method == "standardize", "--epsilon"),
                           (robust, method == "standardize", "--robust")):
        if flag and not ok:
            raise OptionError(f"{name} does not apply to {method}", option=name)
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise OptionError(f"--epsilon must be a finite number >= 0, got {epsilon}", option="--epsilon")
    if max_value is not None and not (isinstance(max_value, (int, float)) and math.isfinite(max_value)
                                      and max_value > 0):
        raise OptionError(f"--max-value must be a finite number > 0, got {max_value}", option="--max-value")
    if clip_percentiles is not None:
        ok = isinstance(clip_percentiles, (list, tuple)) and len(clip_percentiles) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in clip_percentiles)
        if not ok or not 0 <= clip_percentiles[0] < clip_percentiles[1] <= 100:
            raise OptionError(f"--clip-percentiles must be LO,HI with 0 <= LO < HI <= 100, got {clip_percentiles}",
                              option="--clip-percentiles")
        if minmax:
            raise OptionError("--clip-percentiles with normalize maps the percentiles to 0..1; it cannot take "
                              "--minmax", option="--clip-percentiles")
