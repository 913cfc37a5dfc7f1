"""--size as the user's loader does it: Pillow's resize of the fully decoded image
(torchvision's Resize on a PIL image, Keras' load_img), torchvision's
Resize + CenterCrop, a letterbox; draft decoding only when asked."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgnorm.cli import cli
from imgnorm.decode import INTERPOLATIONS, Resize, decode
from imgnorm.errors import OptionError
from imgnorm.sources import open_source


def photo(path, w=640, h=480, seed=0, mode="RGB"):
    """A smooth photo-like JPEG, large enough that libjpeg's draft mode would shrink it."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a = np.stack([(x * 255 // w + y // 3) % 256, (y * 255 // h) % 256, (x + y) % 256], -1).astype(np.float64)
    a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    im = im.convert(mode) if mode != "RGB" else im
    im.save(path, quality=90) if str(path).endswith(".jpg") else im.save(path)
    return str(path)


def pillow(path, mode="RGB"):
    return Image.open(path).convert(mode)


def torchvision_resize_center_crop(im: Image.Image, s: int, resample) -> Image.Image:
    """torchvision's Resize(s) then CenterCrop(s) on a PIL image, as its functional code computes them."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), resample)
    top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
    return im.crop((left, top, left + s, top + s))


@pytest.mark.parametrize("name", list(INTERPOLATIONS))
def test_stretch_equals_pillows_resize_of_the_full_image(tmp_path, name):
    p = photo(tmp_path / "p.jpg")
    for size in ((64, 64), (224, 224), (100, 37), (900, 700)):
        want = np.asarray(pillow(p).resize(size, INTERPOLATIONS[name]))
        np.testing.assert_array_equal(decode(p, "rgb", Resize(size, interpolation=name)), want)


def test_the_default_is_not_draft_mode_and_draft_is_opt_in(tmp_path):
    p = photo(tmp_path / "p.jpg", 1280, 960)
    full = np.asarray(pillow(p).resize((64, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode(p, "rgb", (64, 48)), full)
    im = Image.open(p)
    im.draft("RGB", (64, 48))
    drafted = np.asarray(im.convert("RGB").resize((64, 48), Image.Resampling.BILINEAR))
    got = decode(p, "rgb", Resize((64, 48), draft=True))
    np.testing.assert_array_equal(got, drafted)
    assert not np.array_equal(got, full)  # the shortcut does change pixels: that is why it is opt-in


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (640, 480), (30, 29)])
def test_gray_and_wide_images_are_resized_in_their_own_mode(tmp_path, size):
    p = photo(tmp_path / "p.jpg")
    bilinear = Image.Resampling.BILINEAR  # imgnorm's default (Pillow's own default is bicubic)
    np.testing.assert_array_equal(decode(p, "gray", size)[..., 0], np.asarray(pillow(p, "L").resize(size, bilinear)))
    a = (np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) * 13 % 65536).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    im16 = Image.open(tmp_path / "g16.png")
    assert im16.mode == "I;16"
    np.testing.assert_array_equal(decode(str(tmp_path / "g16.png"), "keep", size)[..., 0],
                                  np.asarray(im16.resize(size, Image.Resampling.BILINEAR)))
    rgba = photo(tmp_path / "p.png", mode="RGBA")  # Pillow premultiplies alpha when it resizes RGBA
    np.testing.assert_array_equal(decode(rgba, "keep", size), np.asarray(pillow(rgba, "RGBA").resize(size, bilinear)))


@pytest.mark.parametrize("wh", [(640, 480), (480, 640), (333, 101), (224, 224), (101, 333), (225, 230)])
@pytest.mark.parametrize("name", ["bilinear", "bicubic", "nearest"])
def test_crop_equals_torchvision_resize_and_center_crop(tmp_path, wh, name):
    p = photo(tmp_path / "p.jpg", *wh)
    for s in (224, 64, 1):
        want = np.asarray(torchvision_resize_center_crop(pillow(p), s, INTERPOLATIONS[name]))
        got = decode(p, "rgb", Resize((s, s), mode="crop", interpolation=name))
        np.testing.assert_array_equal(got, want)


def test_crop_to_a_non_square_size_covers_then_cuts_the_centre(tmp_path):
    p = photo(tmp_path / "p.jpg", 640, 480)
    got = decode(p, "rgb", Resize((300, 100), mode="crop"))
    # width-limited: 640x480 -> 300x225, then the centre 300x100 (rows 62..162)
    want = np.asarray(pillow(p).resize((300, 225), Image.Resampling.BILINEAR))[62:162]
    np.testing.assert_array_equal(got, want)


def test_pad_keeps_the_aspect_and_fills_around(tmp_path):
    p = photo(tmp_path / "p.jpg", 640, 480)
    got = decode(p, "rgb", Resize((224, 224), mode="pad", pad_value=114))
    inner = np.asarray(pillow(p).resize((224, 168), Image.Resampling.BILINEAR))  # 640x480 fits as 224x168
    np.testing.assert_array_equal(got[28:196], inner)
    assert (got[:28] == 114).all() and (got[196:] == 114).all()
    tall = photo(tmp_path / "t.jpg", 101, 333)
    got = decode(tall, "rgb", Resize((64, 64), mode="pad"))
    w = math.floor(101 / (333 / 64))  # the longer side to 64, the other floored: 19
    left = (64 - w) // 2
    np.testing.assert_array_equal(got[:, left:left + w],
                                  np.asarray(pillow(tall).resize((w, 64), Image.Resampling.BILINEAR)))
    assert (got[:, :left] == 0).all() and (got[:, left + w:] == 0).all()


def test_bad_resize_options_are_usage_errors(tmp_path):
    p = photo(tmp_path / "p.jpg", 64, 48)
    for kwargs, text in (({"mode": "fit"}, "resize mode 'fit'"), ({"interpolation": "cubic"}, "interpolation"),
                         ({"pad_value": -1}, "--pad-value")):
        with pytest.raises(OptionError, match=text):
            Resize((8, 8), **kwargs)
    with pytest.raises(OptionError, match="apply with --size"):
        open_source(p, resize_mode="crop")


def test_cli_size_options_are_recorded(tmp_path):
    (tmp_path / "src" / "train" / "c").mkdir(parents=True)
    for i in range(3):
        photo(tmp_path / "src" / "train" / "c" / f"{i}.jpg", 320 + 10 * i, 240, seed=i)
    out = tmp_path / "o.h5"
    r = CliRunner().invoke(cli, ["standardize", str(tmp_path / "src"), "--size", "96", "--resize-mode", "crop",
                                 "--interpolation", "bicubic", "-o", str(out), "--stats-out", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    src = open_source(tmp_path / "src")
    with h5py.File(out) as f:
        opts = json.loads(f.attrs["options"])
        assert (opts["size"], opts["resize_mode"], opts["interpolation"], opts["draft"]) == \
            ([96, 96], "crop", "bicubic", False)
        got = f["train/x"][...]
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["provenance"]["read"] == {"color": "rgb", "channel_order": "rgb", "size": [96, 96], "resize_mode": "crop",
                           "interpolation": "bicubic", "pad_value": None, "draft": False}
    pixels = np.stack([np.asarray(torchvision_resize_center_crop(pillow(f), 96, Image.Resampling.BICUBIC))
                       for f in src.splits["train"].files]).astype(np.float64)
    np.testing.assert_allclose(got, ((pixels - pixels.mean()) / pixels.std()).astype(np.float32), rtol=0,
                               atol=1e-6)
    # a document made from pixels read otherwise is refused, unless --force-stats
    r = CliRunner().invoke(cli, ["standardize", str(tmp_path / "src"), "--size", "96", "--stats",
                                 str(tmp_path / "s.json"), "-o", str(tmp_path / "p.h5")])
    assert r.exit_code == 1 and "read with resize_mode crop" in r.output and "read with resize_mode stretch" \
        in r.output and "--force-stats" in r.output
    r = CliRunner().invoke(cli, ["standardize", str(tmp_path / "src"), "--size", "96", "--stats",
                                 str(tmp_path / "s.json"), "-o", str(tmp_path / "p.h5"), "--force-stats"])
    assert r.exit_code == 0, r.output
