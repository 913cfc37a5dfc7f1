"""Bad and odd inputs: each bad one a clean imgnorm error naming the file, each
valid oddity read exactly as Pillow's ``convert`` reads it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgnorm.cli import cli
from imgnorm.decode import decode
from imgnorm.errors import ImageError, SourceError
from imgnorm.pipeline import compute_stats
from imgnorm.sources import open_source

from conftest import png16, write_jpeg


def jpeg_bytes(rng, size=(16, 16), **save):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", **save)
    return buf.getvalue()


def claim_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0) of a baseline JPEG to claim another size."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


@pytest.fixture
def bad_files(tmp_path, rng):
    good = jpeg_bytes(rng)
    files = {
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "text.jpg": b"this is not an image\n",
        "bomb.jpg": claim_size(good, 60000, 60000),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("name, reason", [
    ("zero.jpg", "not a readable image"),
    ("truncated.jpg", "truncated"),
    ("text.jpg", "not a readable image"),
    ("bomb.jpg", "decompression bomb"),
])
def test_bad_image_files(bad_files, name, reason):
    with pytest.raises(ImageError, match=reason) as e:
        decode(str(bad_files / name))
    assert e.value.path == str(bad_files / name)


def test_decompression_bomb_is_stopped_before_allocating(bad_files):
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError):
        decode(str(bad_files / "bomb.jpg"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing of 10 GB


@pytest.mark.parametrize("make", ["gray", "cmyk", "progressive", "exif", "rgba", "palette", "palette_t", "upper"])
def test_valid_oddities_read_as_pillow_converts(tmp_path, rng, make):
    a = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    path = tmp_path / f"{make}.png"
    if make == "gray":
        path = tmp_path / "g.jpg"
        Image.fromarray(a[:, :, 0]).save(path)
    elif make == "cmyk":
        path = tmp_path / "c.jpg"
        Image.fromarray(a, "CMYK").save(path)
    elif make == "progressive":
        path = tmp_path / "p.jpg"
        Image.fromarray(a[:, :, :3]).save(path, progressive=True)
    elif make == "exif":
        path = tmp_path / "e.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate; convert() does not apply it, nor does imgnorm
        Image.fromarray(a[:, :, :3]).save(path, exif=exif)
    elif make == "rgba":
        Image.fromarray(a, "RGBA").save(path)
    elif make in ("palette", "palette_t"):
        im = Image.fromarray(a[:, :, :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        if make == "palette_t":
            im.info["transparency"] = 0
        im.save(path)
    elif make == "upper":
        path = tmp_path / "U.JPEG"
        Image.fromarray(a[:, :, :3]).save(path, "JPEG")
    for color, mode in (("rgb", "RGB"), ("gray", "L")):
        got = decode(str(path), color)
        want = np.asarray(Image.open(path).convert(mode))
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert len(open_source(path.parent).splits["all"]) == 1


def test_sixteen_bit_gray_is_read_exactly(tmp_path, rng):
    a = rng.integers(0, 65536, (6, 7, 1)).astype(np.uint16)
    p = png16(tmp_path / "g16.png", a)
    for color in ("gray", "keep"):
        src = open_source(p, color=color)
        assert src.max_value == 65535 and src.dtype == np.uint16
        x = next(src.splits["all"].batches(1)).images
        np.testing.assert_array_equal(x[0], a)
    doc = compute_stats(open_source(p, color="gray"))
    assert doc["max_value"] == 65535 and doc["splits"]["all"]["global"]["max"] == int(a.max())
    np.testing.assert_array_equal(decode(p, "rgb"), np.repeat(a, 3, axis=2))  # 16 bits kept, not clipped


def test_8_bit_ppm_and_16_bit_bmp_are_read(tmp_path, rng):
    """An 8-bit PPM, and a BMP of packed 5-6-5 pixels (16 bits a pixel, not a sample), stay readable."""
    a = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    p = tmp_path / "c.ppm"
    p.write_bytes(b"P6\n5 4\n255\n" + a.tobytes())
    np.testing.assert_array_equal(decode(str(p)), a)
    bmp = tmp_path / "p.bmp"
    # written by hand as a 16-bit BI_BITFIELDS bitmap by hand: 5-6-5 masks, 2 bytes a pixel, rows padded to 4 bytes
    rows = b"".join(b"".join(struct.pack("<H", (int(r) >> 3) << 11 | (int(g) >> 2) << 5 | int(b) >> 3)
                             for r, g, b in a[y]).ljust(12, b"\0") for y in range(3, -1, -1))
    head = struct.pack("<2sIHHI", b"BM", 14 + 40 + 12 + len(rows), 0, 0, 14 + 40 + 12)
    info = struct.pack("<IiiHHIIiiII", 40, 5, 4, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    bmp.write_bytes(head + info + struct.pack("<III", 0xF800, 0x07E0, 0x001F) + rows)
    want = np.asarray(Image.open(bmp).convert("RGB"))
    np.testing.assert_array_equal(decode(str(bmp)), want)


def test_mixed_channels_under_keep_name_the_file(tmp_path, rng):
    write_jpeg(tmp_path / "a.jpg", rng)
    write_jpeg(tmp_path / "b.jpg", rng, mode="L")
    src = open_source(tmp_path, color="keep")
    with pytest.raises(ImageError, match=r"b\.jpg: has 1 channel\(s\), but the first image has 3"):
        compute_stats(src, workers=1)


def test_inf_in_float_pixels(tmp_path):
    x = np.zeros((3, 2, 2), np.float64)
    x[1, 0, 0] = np.inf
    np.savez(tmp_path / "f.npz", x_train=x)
    with pytest.raises(SourceError, match=r"f\.npz:x_train: image 1 holds NaN or infinity"):
        compute_stats(open_source(tmp_path / "f.npz"))


def test_npz_header_that_lies_about_its_shape(tmp_path):
    import zipfile
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3, 3), np.uint8))
    member = buf.getvalue().replace(b"(4, 3, 3)", b"(9000, 3, 3)")  # same header length, valid CRC
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(tmp_path / "a.npz", "w", compression) as z:
            z.writestr("x.npy", member)
        with pytest.raises(SourceError, match="header says shape .*the file is corrupt"):
            open_source(tmp_path / "a.npz")


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def runner():
    return CliRunner()


def folder_with_one_bad(tmp_path, rng):
    root = tmp_path / "data"
    for i in range(3):
        write_jpeg(root / "c" / f"{i}.jpg", rng, size=(8, 8))
    (root / "c" / "1.jpg").write_bytes(b"garbage")
    return root


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_image_fails_with_one_line(runner, tmp_path, rng, workers):
    root = folder_with_one_bad(tmp_path, rng)
    r = runner.invoke(cli, ["stats", str(root), "--workers", workers, "--batch-size", "1"])
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {root / 'c' / '1.jpg'}: not a readable image") and r.output.count("\n") == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_on_error_skip_reports_and_records(runner, tmp_path, rng, workers):
    root = folder_with_one_bad(tmp_path, rng)
    r = runner.invoke(cli, ["stats", str(root), "--on-error", "skip", "--json", "--workers", workers])
    assert r.exit_code == 0, r.output
    assert f"skipped {root / 'c' / '1.jpg'}: not a readable image" in r.stderr
    import json
    doc = json.loads(r.stdout)
    # recorded relative to the source, as /files is; reported as the user named it
    assert doc["splits"]["all"]["images"] == 2 and doc["skipped"][0]["file"] == "c/1.jpg"
    out = tmp_path / "o.h5"
    r = runner.invoke(cli, ["normalize", str(root), "-o", str(out), "--on-error", "skip", "--workers", workers])
    assert r.exit_code == 0, r.output
    import h5py
    with h5py.File(out) as f:
        assert f["all/x"].shape[0] == 2 and len(f["all/files"]) == 2 and f["all/y"].shape == (2,)
        assert json.loads(f.attrs["skipped"])[0]["file"] == "c/1.jpg"


def test_on_error_skip_with_nothing_readable_fails(runner, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"x")
    r = runner.invoke(cli, ["stats", str(tmp_path / "d"), "--on-error", "skip"])
    assert r.exit_code == 1 and "no image of split all could be read" in r.output
    r = runner.invoke(cli, ["normalize", str(tmp_path / "d"), "--on-error", "skip", "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and not (tmp_path / "o.h5").exists()


def test_debug_shows_the_traceback(runner, tmp_path):
    r = runner.invoke(cli, ["--debug", "stats", str(tmp_path / "nope")])
    assert r.exit_code == 1 and isinstance(r.exception, SourceError)


@pytest.mark.parametrize("text", ["{", '{"format": "imgnorm.stats", "version": 2}'])
def test_bad_stats_file_on_the_cli(runner, mnist_npz, tmp_path, text):
    (tmp_path / "s.json").write_text(text)
    r = runner.invoke(cli, ["standardize", str(mnist_npz[0]), "--stats", str(tmp_path / "s.json"),
                            "-o", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and r.output.startswith(f"Error: {tmp_path / 's.json'}:") and r.output.count("\n") == 1


@pytest.mark.parametrize("deflated", [False, True])
def test_npz_member_whose_data_fails_its_crc(tmp_path, deflated):
    """Data that decodes fine but is not what was stored: refused, as np.load refuses it."""
    import zipfile
    buf = io.BytesIO()
    # large enough that opening reads only the header, so the check at the end of the data is what fires
    np.save(buf, np.random.default_rng(0).integers(0, 256, (40, 160, 160), dtype=np.uint8))
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", buf.getvalue())
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("x.npy")
    if deflated:  # the stored CRC itself is wrong, in the local header and the central directory
        crc = struct.pack("<I", info.CRC)
        data = bytearray(bytes(data).replace(crc, struct.pack("<I", info.CRC ^ 1)))
    else:  # one pixel changed after the CRC was written
        data[info.header_offset + 30 + len("x.npy") + 128 + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    src = open_source(path)
    with pytest.raises(SourceError, match=r"c\.npz:x: corrupt array data \((Bad )?CRC"):
        np.concatenate([b.images for b in src.splits["all"].batches(8)])
