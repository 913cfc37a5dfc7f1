"""The fast JPEG path gives exactly Pillow's pixels, or steps aside."""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgnorm import decode as dec


def pillow_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_fast_path_is_identical_to_pillow(tmp_path, rng):
    assert dec.simplejpeg is not None
    taken = 0
    for i in range(150):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        # smooth-ish content exercises upsampling; noise exercises the DCT
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:
            base = np.cumsum(base.astype(np.int32), axis=1).astype(np.uint8)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(base).save(path, quality=int(rng.integers(20, 101)),
                                   subsampling=int(rng.integers(0, 3)), progressive=bool(i % 3 == 0))
        fast = dec._fast_jpeg(str(path))
        assert fast is not None
        taken += 1
        np.testing.assert_array_equal(fast, pillow_rgb(path))
        np.testing.assert_array_equal(dec.decode(str(path)), pillow_rgb(path))
    assert taken == 150


def test_fast_path_steps_aside_for_other_jpegs(tmp_path, rng):
    a = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(a[:, :, 0]).save(tmp_path / "gray.jpg")
    Image.fromarray(a, "CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(a[:, :, :3]).save(tmp_path / "png.jpg", format="PNG")  # misnamed
    for name in ("gray.jpg", "cmyk.jpg", "png.jpg"):
        assert dec._fast_jpeg(str(tmp_path / name)) is None
        np.testing.assert_array_equal(dec.decode(str(tmp_path / name)), pillow_rgb(tmp_path / name))
