"""16-bit colour images, read with all their bits.

Pillow reads 16-bit colour PNG, TIFF and PPM as 8 bits a sample (only 16-bit
grayscale keeps its bits, as ``I;16``). Those files are read here instead, as
uint16 samples exactly as stored:

- PNG with imagecodecs (libpng): the one fast, exact 16-bit PNG decoder on
  PyPI; pypng keeps the bits too but unfilters rows in Python, some hundred
  times slower on a microscopy tile;
- TIFF with tifffile, whose compressions (LZW, Deflate, ...) come from imagecodecs;
- PPM (binary and plain) with numpy, no extra needed: samples are scaled to
  0..65535 when the maxval is not 65535, exactly as Pillow scales a 16-bit
  PGM (``round(v / maxval * 65535)``, halves to even).

imagecodecs and tifffile are the optional extra ``imgnorm[16bit]``; without
them a 16-bit colour PNG or TIFF stops the run, naming the extra.

Colour conversion follows Pillow's ``convert`` on 16-bit samples: ``rgb``
drops alpha and repeats gray, ``gray`` is Pillow's ITU-R 601-2 luma in
integers, ``(19595 R + 38470 G + 7471 B + 32768) >> 16``. A resize is done
channel by channel as Pillow resizes 16-bit grayscale (alpha is not
premultiplied).
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ImageError, MissingExtraError, OptionError

EXTRA = "pip install 'imgnorm[16bit]'"


def _need(module: str, fmt: str, path: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtraError(f"{path}: 16-bit colour {fmt} needs {module}, which is not installed: "
                                f"{EXTRA} (Pillow would keep only 8 bits)") from None


def check_available(path: str, fmt: str | None) -> None:
    """Raise :class:`MissingExtraError` now if reading this 16-bit colour file will need a missing extra."""
    if fmt == "PNG":
        _need("imagecodecs", "PNG", path)
    elif fmt == "TIFF":
        _need("tifffile", "TIFF", path)


def read_wide(path: str, fmt: str | None) -> np.ndarray:
    """The stored samples of a 16-bit colour file, shape (height, width, channels), uint16.

    Channels as stored: 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    """
    if fmt == "PNG":
        a = _read_png(path)
    elif fmt == "TIFF":
        a = _read_tiff(path)
    elif fmt == "PPM":
        a = read_ppm(path)
    else:
        raise ImageError(path, f"{fmt} image with more than 8 bits per sample is not supported; "
                         "convert it to 16-bit PNG or TIFF")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
        raise ImageError(path, f"decoded to shape {a.shape}; expected (height, width, 1..4 channels)")
    if a.dtype != np.uint16:
        if a.dtype.kind != "u" or a.dtype.itemsize > 2:
            raise ImageError(path, f"samples of {a.dtype}; imgnorm reads 8- and 16-bit unsigned images")
        a = a.astype(np.uint16)
    return np.ascontiguousarray(a)


def _read_png(path: str) -> np.ndarray:
    imagecodecs = _need("imagecodecs", "PNG", path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return imagecodecs.png_decode(data)
    except Exception as e:
        raise ImageError(path, f"cannot decode 16-bit PNG ({str(e).strip() or type(e).__name__})") from None


def _read_tiff(path: str) -> np.ndarray:
    tifffile = _need("tifffile", "TIFF", path)
    try:
        with tifffile.TiffFile(path) as t:
            page = t.pages[0]  # the first image, as Pillow opens it
            photometric = int(page.photometric)
            if photometric not in (1, 2):  # MINISBLACK, RGB
                raise ImageError(path, f"16-bit TIFF with photometric interpretation {photometric} "
                                 "(not RGB or grayscale) is not supported")
            a = page.asarray()
            axes = page.axes
    except ImageError:
        raise
    except ImportError as e:  # a compression whose codec is missing
        raise MissingExtraError(f"{path}: {e}; {EXTRA}") from None
    except Exception as e:
        raise ImageError(path, f"cannot decode 16-bit TIFF ({str(e).strip() or type(e).__name__})") from None
    if axes == "SYX":  # planar configuration: channels first
        a = np.moveaxis(a, 0, -1)
    elif axes not in ("YXS", "YX"):
        raise ImageError(path, f"TIFF page of axes {axes!r}; imgnorm reads one 2-D image per file")
    return a


_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*[\n\r])*([^\s#]+)")


def read_ppm(path: str) -> np.ndarray:
    """A PPM/PGM (``P2``, ``P3``, ``P5``, ``P6``) with maxval above 255 as uint16, scaled as Pillow scales."""
    with open(path, "rb") as f:
        data = f.read()
    pos, fields = 0, []
    for _ in range(4):
        m = _TOKEN.match(data, pos)
        if not m:
            raise ImageError(path, "truncated PPM header")
        fields.append(m.group(1))
        pos = m.end()
    magic = fields[0]
    try:
        w, h, maxval = (int(v) for v in fields[1:])
    except ValueError:
        raise ImageError(path, "PPM header fields are not numbers") from None
    channels = {b"P2": 1, b"P5": 1, b"P3": 3, b"P6": 3}.get(magic)
    if channels is None or not 0 < maxval < 65536 or w < 1 or h < 1:
        raise ImageError(path, f"not a PPM/PGM of 16-bit samples (magic {magic!r}, maxval {maxval})")
    n = w * h * channels
    if magic in (b"P5", b"P6"):
        raw = data[pos + 1:pos + 1 + 2 * n]  # one whitespace byte ends the header
        if len(raw) < 2 * n:
            raise ImageError(path, f"PPM data ends early ({len(raw)} of {2 * n} bytes)")
        v = np.frombuffer(raw, ">u2").astype(np.int64)
        clip = True  # Pillow's raw decoder clamps values above maxval
    else:
        try:
            v = np.array(re.sub(rb"#[^\n\r]*", b" ", data[pos:]).split(), dtype=np.int64)
        except (ValueError, OverflowError):
            raise ImageError(path, "plain PPM data holds something other than numbers") from None
        if v.size < n:
            raise ImageError(path, f"plain PPM data ends early ({v.size} of {n} values)")
        v = v[:n]
        if (v > maxval).any() or (v < 0).any():
            raise ImageError(path, f"plain PPM holds a value above its maxval {maxval}")
        clip = False
    if maxval != 65535:
        v = np.round(v / maxval * 65535)  # float64, halves to even: Python's round() in Pillow
    if clip:
        v = np.minimum(v, 65535)
    return v.astype(np.uint16).reshape(h, w, channels)


def convert_wide(a: np.ndarray, color: str) -> np.ndarray:
    """Stored 16-bit samples (height, width, 1..4) in the channels ``color`` asks for, as Pillow's ``convert``."""
    c = a.shape[2]
    if color == "keep":
        return a
    if color == "rgb":
        if c >= 3:
            return np.ascontiguousarray(a[:, :, :3])
        return np.repeat(a[:, :, :1], 3, axis=2)
    if color == "gray":
        if c < 3:
            return np.ascontiguousarray(a[:, :, :1])
        r, g, b = (a[:, :, k].astype(np.uint64) for k in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).astype(np.uint16)[:, :, None]
    raise OptionError(f"color {color!r} is not one of rgb, gray, keep", option="--color")


def resize_wide(a: np.ndarray, resize) -> np.ndarray:
    """Each channel resized as Pillow resizes a 16-bit grayscale (``I;16``) image."""
    from PIL import Image

    out = []
    for k in range(a.shape[2]):
        im = resize.apply(Image.fromarray(np.ascontiguousarray(a[:, :, k])))
        out.append(np.asarray(im).astype(np.uint16, copy=False))  # Pillow keeps the I;16 mode
    return np.stack(out, axis=2)
