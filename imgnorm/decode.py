"""One image file -> one pixel array, the way Pillow's ``convert`` reads it.

Used by source readers in the main process and by decoding worker processes,
so everything here is a plain function of its arguments.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from PIL import Image

from .errors import ImageError, OptionError


# Pillow modes that hold more than 8 bits per sample.  ``convert("RGB")`` or
# ``convert("L")`` would clip them to 8 bits without a word, so they are read
# as uint16 where that is exact and refused otherwise.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageInfo(NamedTuple):
    """What an image header says, read without decoding any pixels."""

    width: int
    height: int
    mode: str
    format: str | None


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` (for example ``"224x224"``), or ``"S"`` for SxS, into ``(width, height)``."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*(?:[xX×]\s*(\d{1,9})\s*)?", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise OptionError(f"size {text!r} is not WIDTHxHEIGHT or one number, for example 224x224 or 224",
                          option="--size")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else w
    # The same bound as a decoded image's: a target above it would allocate
    # gigabytes per image before anything else could fail.
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:
        raise OptionError(f"size {w}x{h} is {w * h:,} pixels, more than Pillow's decompression-bomb limit of "
                          f"{limit:,}; choose a smaller size", option="--size")
    return w, h


def _open(path: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A header that claims more pixels than Pillow's limit is refused
            # before any pixel buffer is allocated.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"refused: {e}") from None
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except Exception as e:  # Pillow raises many types for undecodable files
        raise ImageError(path, f"not a readable image ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def probe(path: str) -> ImageInfo:
    """Read an image's size and mode from its header, decoding no pixels."""
    with _open(path) as im:
        # 16-bit colour shows as such ("RGB;16"), not as the 8-bit mode Pillow would read it in
        mode = f"{im.mode};{bits_per_sample(im)}" if is_wide_colour(im) else im.mode
        return ImageInfo(im.width, im.height, mode, im.format)


def bits_per_sample(im: Image.Image) -> int:
    """The bits per sample the file stores, whatever mode Pillow gives it.

    Pillow reads 16-bit colour (PNG ``RGB;16B``, TIFF ``RGB;16N``, PPM with a
    maxval above 255) as 8-bit ``RGB``; the file's own header says otherwise:
    the raw mode of its tiles, a PPM's maxval, a TIFF's BitsPerSample.
    """
    bits = 8
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        # "RGB;16B", "CMYK;16N", "I;16": 16 bits a sample; "BGR;16" without a byte
        # order is a packed 5-6-5 pixel of 8-bit-or-less samples
        m = re.fullmatch(r"([A-Za-z]+);(\d+)([BLN]?)S?F?", raw) if isinstance(raw, str) else None
        if m and int(m.group(2)) >= 16 and (m.group(3) or m.group(1) in ("I", "F", "L")):
            bits = max(bits, int(m.group(2)))
        if tile[0].startswith("ppm") and isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int):
            bits = max(bits, int(args[1]).bit_length())  # maxval 65535 -> 16 bits
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        per_sample = tags.get(258)  # BitsPerSample
        if isinstance(per_sample, tuple) and per_sample:
            bits = max(bits, *(int(b) for b in per_sample))
        elif isinstance(per_sample, int):
            bits = max(bits, per_sample)
    return bits


def is_wide_colour(im: Image.Image) -> bool:
    """A colour image with more than 8 bits a sample, which Pillow would read as 8 (see :mod:`imgnorm.decode16`)."""
    return im.mode not in _WIDE_MODES and bits_per_sample(im) > 8


def probe_dtype(path: str) -> np.dtype:
    """uint16 for an image of more than 8 bits a sample, else uint8, from its header.

    Raises :class:`imgnorm.errors.MissingExtraError` at once when reading
    the file will need the ``imgnorm[16bit]`` extra and it is missing.
    """
    with _open(path) as im:
        if is_wide_colour(im):
            from .decode16 import check_available
            check_available(path, im.format)
            return np.dtype(np.uint16)
        return np.dtype(np.uint16 if im.mode in _WIDE_MODES else np.uint8)


def _decode_wide(im: Image.Image, path: str, color: str, resize: "Resize | None") -> np.ndarray:
    """A 16-bit colour file, all bits kept: see :mod:`imgnorm.decode16`."""
    from .decode16 import convert_wide, read_wide, resize_wide
    a = read_wide(path, im.format)
    if a.shape[:2] != (im.height, im.width):  # the header Pillow read (and checked against its limit)
        raise ImageError(path, f"decodes to {a.shape[1]}x{a.shape[0]} pixels but its header says "
                         f"{im.width}x{im.height}; the file is damaged")
    a = convert_wide(a, color)
    return resize_wide(a, resize) if resize is not None else a


def _convert(im: Image.Image, color: str, path: str) -> Image.Image:
    """The image in the mode ``color`` asks for, as Pillow's ``convert`` gives it.

    16-bit grayscale stays in its own mode (``rgb`` repeats it into three
    channels after any resize, in :func:`decode`).
    """
    mode = im.mode
    if mode in _WIDE_MODES:
        return im  # 16 bits kept; made uint16 after any resize
    if mode in ("F",):
        raise ImageError(path, "floating-point images are not supported; convert to 8 or 16 bits")
    if color == "rgb":
        return im.convert("RGB")
    if color == "gray":
        return im.convert("L")
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return im.convert("RGB")
    return im


try:  # libjpeg-turbo through simplejpeg: about 1.7x Pillow's speed, the same pixels
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None
if os.environ.get("IMGNORM_NO_SIMPLEJPEG"):
    simplejpeg = None


def _fast_jpeg(path: str) -> np.ndarray | None:
    """Decode a colour JPEG to RGB with simplejpeg, or None to take Pillow's path.

    Used only where it gives exactly Pillow's ``convert("RGB")`` pixels (the
    tests compare the two): a 3-component YCbCr JPEG at full size, decoded with
    the default (accurate) DCT and fancy upsampling.  Anything libjpeg warns
    about, or any other JPEG, goes to Pillow, which decides.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] != b"\xff\xd8":
            return None
        h, w, space, _ = simplejpeg.decode_jpeg_header(data)
        if space != "YCbCr" or h * w > Image.MAX_IMAGE_PIXELS:
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except Exception:
        return None


def decode(path: str, color: str = "rgb", resize: "Resize | tuple[int, int] | None" = None) -> np.ndarray:
    """Decode one image file, as ``Image.open(path).convert(mode).resize(...)`` gives it.

    Parameters
    ----------
    path : str
        The image file.
    color : {"rgb", "gray", "keep"}
        ``rgb`` and ``gray`` convert as Pillow's ``convert("RGB")`` /
        ``convert("L")`` do; ``keep`` keeps the file's own channels (palette
        images become RGB or RGBA).
    resize : Resize or (width, height), optional
        Pillow's resize of the fully decoded image (see :class:`Resize`); a
        JPEG is shrunk through libjpeg's draft mode first only with
        ``Resize(draft=True)``.

    Returns
    -------
    ndarray of shape (height, width, channels)
        uint8, or uint16 for images of more than 8 bits a sample (16-bit
        colour through :mod:`imgnorm.decode16`, all bits kept).
    """
    if resize is not None and not isinstance(resize, Resize):
        resize = Resize(tuple(resize))
    draft = resize is not None and resize.draft
    if simplejpeg is not None and not draft and path.lower().endswith((".jpg", ".jpeg")):
        a = _fast_jpeg(path)  # the same RGB pixels Pillow decodes, faster
        if a is not None:
            if resize is None and color != "gray":
                return a
            im = Image.fromarray(a, "RGB")
            return _finish(im.convert("L") if color == "gray" else im, resize, path)
    im = _open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if is_wide_colour(im):
                return _decode_wide(im, path, color, resize)
            if draft and im.format == "JPEG":
                im.draft(im.mode, resize.scaled_size(im.size))  # opt-in: faster, slightly different pixels
            im.load()
            a = _finish(_convert(im, color, path), resize, path)
            if color == "rgb" and im.mode in _WIDE_MODES:  # 16-bit gray as RGB: repeated, 16 bits kept
                a = np.repeat(a, 3, axis=2)
            return a
    except (ImageError, OptionError):
        raise
    except Exception as e:
        raise ImageError(path, f"cannot decode ({_reason(e)})") from None
    finally:
        im.close()


def _finish(im: Image.Image, resize: "Resize | None", path: str) -> np.ndarray:
    """Resize in the image's own mode (as a user's loader does), then the array."""
    if resize is not None:
        im = resize.apply(im)
    a = np.asarray(im)
    if im.mode in _WIDE_MODES and a.dtype != np.uint16:
        if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # I;16B: big-endian
            a = a.astype(np.uint16)
        else:
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageError(path, f"{im.mode} pixels outside 0..65535 are not supported")
            a = a.astype(np.uint16)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a)


# Keras' names for Pillow's filters (keras.utils.load_img's `interpolation`).
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
RESIZE_MODES = ("stretch", "crop", "pad")


@dataclass(frozen=True)
class Resize:
    """How images are brought to one size: the options of ``--size`` bound once.

    Attributes
    ----------
    size : (width, height)
    mode : {"stretch", "crop", "pad"}
        ``stretch``: ``Image.resize(size)``, aspect not kept (Keras'
        ``target_size``). ``crop``: scale so the image covers the size (the
        shorter side to the target, the other ``int(target * long / short)``,
        as torchvision's ``Resize(S)``), then cut the centre (torchvision's
        ``CenterCrop``: offsets ``int(round(excess / 2))``). ``pad``: scale so
        the image fits (the longer side to the target, the other floored),
        then pad with ``pad_value`` around the centre (offsets floored), as
        TensorFlow's ``resize_with_pad``.
    interpolation : str
        One of :data:`INTERPOLATIONS` (Keras' names); Pillow's filter.
    pad_value : int
        The fill of ``pad`` mode, in pixel levels.
    draft : bool
        Let libjpeg shrink JPEGs by a power of two while decoding: much
        faster on large photos, pixels slightly different from a full decode.
    """

    size: tuple[int, int]
    mode: str = "stretch"
    interpolation: str = "bilinear"
    pad_value: int = 0
    draft: bool = False

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise OptionError(f"resize mode {self.mode!r} is not one of {', '.join(RESIZE_MODES)}",
                              option="--resize-mode")
        if self.interpolation not in INTERPOLATIONS:
            raise OptionError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}",
                              option="--interpolation")
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, int) or \
                not 0 <= self.pad_value <= 65535:
            raise OptionError(f"--pad-value must be a whole number of 0..65535 (a pixel level), got "
                              f"{self.pad_value!r}", option="--pad-value")
        w, h = self.size
        if not (isinstance(w, int) and isinstance(h, int) and w >= 1 and h >= 1):
            raise OptionError(f"size {self.size!r} is not a width and height of at least 1", option="--size")

    def scaled_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the image is resized to before a crop or a pad."""
        (w, h), (tw, th) = image_size, self.size
        if self.mode == "stretch":
            return tw, th
        if self.mode == "crop":  # cover the target; torchvision's int(S * long / short) for the other side
            if tw * h >= th * w:  # width-limited: the target's width decides
                return tw, max(th, int(tw * h / w))
            return max(tw, int(th * w / h)), th
        ratio = max(Fraction(w, tw), Fraction(h, th))  # fit inside the target, exactly
        return max(1, min(tw, math.floor(w / ratio))), max(1, min(th, math.floor(h / ratio)))

    def apply(self, im: Image.Image) -> Image.Image:
        """Resize a decoded image (in its own mode) to :attr:`size`."""
        tw, th = self.size
        sw, sh = self.scaled_size(im.size)
        if (sw, sh) != im.size:
            im = im.resize((sw, sh), INTERPOLATIONS[self.interpolation])
        if self.mode == "crop" and (sw, sh) != (tw, th):
            left, top = int(round((sw - tw) / 2.0)), int(round((sh - th) / 2.0))
            im = im.crop((left, top, left + tw, top + th))
        elif self.mode == "pad" and (sw, sh) != (tw, th):
            fill = self.pad_value if len(im.getbands()) == 1 else (self.pad_value,) * len(im.getbands())
            canvas = Image.new(im.mode, (tw, th), fill)
            canvas.paste(im, ((tw - sw) // 2, (th - sh) // 2))
            im = canvas
        return im

    def describe(self) -> dict:
        """What a stats document and the HDF5 attributes record of it."""
        return {"size": list(self.size), "resize_mode": self.mode, "interpolation": self.interpolation,
                "pad_value": self.pad_value if self.mode == "pad" else None, "draft": self.draft}
