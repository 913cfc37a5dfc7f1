"""16-bit colour images: every bit kept (imgnorm.decode16), never reduced to 8 silently."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgnorm.cli import cli
from imgnorm.decode import decode
from imgnorm.decode16 import MissingExtraError
from imgnorm.errors import ImageError
from imgnorm.pipeline import compute_stats
from imgnorm.sources import open_source

from conftest import png16, write_jpeg

tifffile = pytest.importorskip("tifffile")


def ppm(path, a, maxval, plain=False):
    """A P6 (or P3) PPM of samples ``a`` (h, w, 3) with the given maxval, with a header comment."""
    h, w, _ = a.shape
    head = f"{'P3' if plain else 'P6'}\n# made by a test\n{w} {h}\n{maxval}\n".encode()
    body = (" ".join(map(str, a.ravel())) + "\n").encode() if plain else a.astype(">u2").tobytes()
    path.write_bytes(head + body)
    return str(path)


def luma(a):
    """Pillow's ITU-R 601-2 luma in integers, on Python ints (independent of numpy's wrap-around)."""
    h, w, _ = a.shape
    return np.array([[(int(a[y, x, 0]) * 19595 + int(a[y, x, 1]) * 38470 + int(a[y, x, 2]) * 7471 + 32768) >> 16
                      for x in range(w)] for y in range(h)], np.uint16)[:, :, None]


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_png_keeps_every_bit(tmp_path, rng, channels):
    a = rng.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    p = png16(tmp_path / "c.png", a)
    assert np.asarray(Image.open(p)).dtype == np.uint8  # what Pillow would give
    keep = decode(p, "keep")
    assert keep.dtype == np.uint16
    np.testing.assert_array_equal(keep, a)
    rgb = a[:, :, :3] if channels >= 3 else np.repeat(a[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(decode(p, "rgb"), rgb)  # alpha dropped, gray repeated, as convert("RGB")
    gray = luma(a) if channels >= 3 else a[:, :, :1]
    np.testing.assert_array_equal(decode(p, "gray"), gray)


@pytest.mark.parametrize("compression, planar", [(None, "contig"), ("lzw", "contig"), ("zlib", "contig"),
                                                  (None, "separate"), ("zlib", "separate")])
def test_16_bit_tiff_keeps_every_bit(tmp_path, rng, compression, planar):
    a = rng.integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    p = str(tmp_path / "c.tif")
    stored = a if planar == "contig" else np.moveaxis(a, 2, 0)  # separate planes: (samples, h, w)
    tifffile.imwrite(p, stored, photometric="rgb", compression=compression, planarconfig=planar)
    np.testing.assert_array_equal(decode(p, "keep"), a)
    np.testing.assert_array_equal(decode(p, "rgb"), a)


def test_16_bit_tiff_with_alpha_and_a_second_page(tmp_path, rng):
    a = rng.integers(0, 65536, (4, 5, 4), dtype=np.uint16)
    p = str(tmp_path / "c.tif")
    tifffile.imwrite(p, a, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(p, a[:, :, :3] // 2, photometric="rgb", append=True)  # only the first page is the image
    np.testing.assert_array_equal(decode(p, "keep"), a)
    np.testing.assert_array_equal(decode(p, "rgb"), a[:, :, :3])


@pytest.mark.parametrize("maxval, plain", [(65535, False), (4095, False), (65535, True), (1000, True)])
def test_16_bit_ppm_is_scaled_as_pillow_scales_16_bit_pgm(tmp_path, rng, maxval, plain):
    a = rng.integers(0, maxval + 1, (4, 5, 3))
    p = ppm(tmp_path / "c.ppm", a, maxval, plain)
    want = np.array([round(int(v) / maxval * 65535) for v in a.ravel()], np.uint16).reshape(a.shape)
    np.testing.assert_array_equal(decode(p, "keep"), want)
    # The rule is Pillow's own for a 16-bit gray PGM of the same maxval:
    pgm = tmp_path / "g.pgm"
    pgm.write_bytes(f"P5\n5 4\n{maxval}\n".encode() + a[:, :, 0].astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(Image.open(pgm)), want[:, :, 0].astype(np.int32))


def test_damaged_16_bit_files_are_image_errors(tmp_path, rng):
    a = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    p = tmp_path / "c.png"
    png16(p, a)
    data = bytearray(p.read_bytes())
    data[60:70] = b"\xff" * 10  # inside IDAT
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="c.png"):
        decode(str(p), "rgb")
    q = tmp_path / "short.ppm"
    q.write_bytes(b"P6\n5 4\n65535\n" + b"\0" * 50)
    with pytest.raises(ImageError, match="ends early"):
        decode(str(q), "rgb")


def test_16_bit_colour_resized_channel_by_channel_as_pillow_resizes_16_bit_gray(tmp_path, rng):
    from imgnorm.decode import Resize
    a = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    p = png16(tmp_path / "c.png", a)
    for mode in ("stretch", "crop", "pad"):
        r = Resize((16, 12), mode, "bicubic", pad_value=7)
        got = decode(p, "rgb", r)
        want = np.stack([np.asarray(r.apply(Image.fromarray(np.ascontiguousarray(a[:, :, k])))) for k in range(3)],
                        axis=2)
        assert got.shape == (12, 16, 3) and got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)


def test_a_folder_of_16_bit_colour_images_gives_exact_uint16_statistics(tmp_path, rng):
    imgs = [rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16) for _ in range(4)]
    for i, a in enumerate(imgs):
        (tmp_path / "d" / "k").mkdir(parents=True, exist_ok=True)
        png16(tmp_path / "d" / "k" / f"{i}.png", a)
    src = open_source(tmp_path / "d")  # --color rgb, the default
    assert src.dtype == np.uint16 and src.max_value == 65535
    doc = compute_stats(src)
    x = np.stack(imgs).astype(np.float64)
    s = doc["splits"]["all"]
    assert s["per_channel"]["mean"] == list(x.reshape(-1, 3).mean(axis=0))
    assert s["per_channel"]["max"] == [int(v) for v in x.reshape(-1, 3).max(axis=0)]
    assert s["percentiles"]["global"]["median"] == float(np.median(np.stack(imgs)))


def test_8_and_16_bit_images_in_one_folder_are_an_error_naming_the_file(tmp_path, rng):
    (tmp_path / "d").mkdir()
    write_jpeg(tmp_path / "d" / "a.jpg", rng)
    png16(tmp_path / "d" / "b.png", rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16))
    r = CliRunner().invoke(cli, ["stats", str(tmp_path / "d")])
    assert r.exit_code == 1 and "b.png" in r.output and "uint16" in r.output and "one bit depth" in r.output


def test_a_missing_extra_is_a_clear_error_before_any_work(tmp_path, rng, monkeypatch):
    (tmp_path / "d").mkdir()
    png16(tmp_path / "d" / "b.png", rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16))
    real_import = builtins.__import__

    def no_imagecodecs(name, *args, **kwargs):
        if name == "imagecodecs":
            raise ImportError("No module named 'imagecodecs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imagecodecs)
    with pytest.raises(MissingExtraError, match=r"imgnorm\[16bit\]"):
        decode(str(tmp_path / "d" / "b.png"), "rgb")
    out = tmp_path / "o.h5"
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "d"), "-o", str(out), "--workers", "1"])
    assert r.exit_code == 2, r.output
    assert "b.png" in r.output and "pip install 'imgnorm[16bit]'" in r.output and "Traceback" not in r.output
    assert not out.exists()
    # 16-bit PPM needs no extra
    ppm(tmp_path / "c.ppm", rng.integers(0, 65536, (4, 5, 3)), 65535)
    assert decode(str(tmp_path / "c.ppm"), "rgb").dtype == np.uint16


def test_webp_files_in_a_folder_are_read_as_pillow_reads_them(tmp_path, rng):
    a = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    (tmp_path / "d" / "k").mkdir(parents=True)
    Image.fromarray(a).save(tmp_path / "d" / "k" / "lossless.webp", lossless=True)
    Image.fromarray(a).save(tmp_path / "d" / "k" / "lossy.WEBP", quality=50)
    Image.fromarray(np.dstack([a, a[:, :, :1]])).save(tmp_path / "d" / "k" / "alpha.webp", lossless=True)
    src = open_source(tmp_path / "d")
    files = src.splits["all"].files
    assert [f.rsplit("/", 1)[1] for f in files] == ["alpha.webp", "lossless.webp", "lossy.WEBP"]
    got = next(src.splits["all"].batches(3)).images
    for f, g in zip(files, got):
        np.testing.assert_array_equal(g, np.asarray(Image.open(f).convert("RGB")))
    np.testing.assert_array_equal(got[1], a)  # lossless is exact
    doc = json.loads(CliRunner().invoke(cli, ["stats", str(tmp_path / "d"), "--json"]).stdout)
    assert doc["splits"]["all"]["images"] == 3


def test_inspect_names_16_bit_colour_in_the_modes(tmp_path, rng):
    (tmp_path / "d").mkdir()
    png16(tmp_path / "d" / "a.png", rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16))
    write_jpeg(tmp_path / "d" / "b.jpg", rng)
    doc = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "d"), "--json"]).stdout)
    assert doc["splits"]["all"]["modes"] == {"RGB;16": 1, "RGB": 1}
