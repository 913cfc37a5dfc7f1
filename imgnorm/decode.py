"""One image file -> one pixel array, the way Pillow's ``convert`` reads it.

Used by source readers in the main process and by decoding worker processes,
so everything here is a plain function of its arguments.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image

from .errors import ImageError, OptionError


# Pillow modes that hold more than 8 bits per sample.  ``convert("RGB")`` or
# ``convert("L")`` would clip them to 8 bits without a word, so they are read
# as uint16 where that is exact and refused otherwise.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# Resampling filter for --size.  Pillow's bilinear filter antialiases when it
# shrinks (like torchvision's Resize), unlike Keras' default of nearest.
RESAMPLE = Image.Resampling.BILINEAR


class ImageInfo(NamedTuple):
    """What an image header says, read without decoding any pixels."""

    width: int
    height: int
    mode: str
    format: str | None


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` (for example ``"224x224"``) into ``(width, height)``."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*[xX×]\s*(\d{1,9})\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise OptionError(f"size {text!r} is not WIDTHxHEIGHT, for example 224x224", option="--size")
    w, h = int(m.group(1)), int(m.group(2))
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
        return ImageInfo(im.width, im.height, im.mode, im.format)


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


def _check_depth(im: Image.Image, path: str) -> None:
    """Refuse colour images stored with more than 8 bits per sample: Pillow reads them as 8."""
    if im.mode not in _WIDE_MODES and bits_per_sample(im) > 8:
        raise ImageError(path, f"{bits_per_sample(im)}-bit {im.mode} image; Pillow can only read it as 8 bits, "
                         "which would drop precision. Convert it to 8-bit, or to 16-bit grayscale, first")


def _to_array(im: Image.Image, color: str, path: str) -> np.ndarray:
    mode = im.mode
    if mode in _WIDE_MODES:
        if color == "rgb":
            raise ImageError(path, f"{mode} image has more than 8 bits per sample; "
                             "read it with --color gray or --color keep (uint16, max 65535)")
        a = np.asarray(im)
        if a.dtype != np.uint16:
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageError(path, f"{mode} pixels outside 0..65535 are not supported")
            a = a.astype(np.uint16)
        return a[:, :, None]
    if mode in ("F",):
        raise ImageError(path, "floating-point images are not supported; convert to 8 or 16 bits")
    if color == "rgb":
        im = im.convert("RGB")
    elif color == "gray":
        im = im.convert("L")
    elif mode in ("1",):
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[:, :, None]
    return a


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


def decode(path: str, color: str = "rgb", size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file.

    Parameters
    ----------
    path : str
        The image file.
    color : {"rgb", "gray", "keep"}
        ``rgb`` and ``gray`` convert as Pillow's ``convert("RGB")`` /
        ``convert("L")`` do; ``keep`` keeps the file's own channels (palette
        images become RGB or RGBA).
    size : (width, height), optional
        Resize to exactly this size.  JPEGs are first shrunk by the decoder's
        draft mode (a power-of-two DCT scaling, much faster), never below
        ``size``.

    Returns
    -------
    ndarray of shape (height, width, channels)
        uint8, or uint16 for 16-bit images read with ``gray`` or ``keep``.
    """
    if simplejpeg is not None and color == "rgb" and size is None and path.lower().endswith((".jpg", ".jpeg")):
        a = _fast_jpeg(path)
        if a is not None:
            return a
    im = _open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            _check_depth(im, path)
            if size is not None and im.format == "JPEG":
                im.draft(im.mode, size)  # same colour path as without --size; only smaller
            im.load()
            a = _to_array(im, color, path)
            if size is not None and (a.shape[1], a.shape[0]) != size:
                a = _resize(a, size)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(path, f"cannot decode ({_reason(e)})") from None
    finally:
        im.close()
    return np.ascontiguousarray(a)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if a.dtype == np.uint16:
        # Pillow resizes 16-bit data in 32-bit integer mode, one channel at a time.
        chans = [np.asarray(Image.fromarray(a[:, :, c].astype(np.int32), "I").resize(size, RESAMPLE))
                 for c in range(a.shape[2])]
        return np.clip(np.stack(chans, axis=-1), 0, 65535).astype(np.uint16)
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    r = np.asarray(im.resize(size, RESAMPLE))
    return r[:, :, None] if r.ndim == 2 else r
