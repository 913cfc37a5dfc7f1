"""Source readers: folder rules, every .npz variant, single images, batches."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from imgnorm.errors import OptionError, SourceError
from imgnorm.sources import open_source

from conftest import write_jpeg


def stacked(split, batch_size=3):
    return np.concatenate([b.images for b in split.batches(batch_size)])


# ---------------------------------------------------------------- folders


def test_split_and_class_folders(photo_folder):
    src = open_source(photo_folder)
    assert src.kind == "folder" and list(src.splits) == ["train", "val"]
    assert src.class_names == ["cat", "dog", "owl"]
    train = src.splits["train"]
    assert len(train) == 12 and len(src.splits["val"]) == 6
    assert train.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 5
    assert [os.path.basename(f) for f in train.files[:2]] == ["cat_00.jpg", "cat_01.jpg"]
    assert src.fit_split == "train" and src.channels == 3 and src.max_value == 255


def test_batches_decode_like_pillow_in_order(photo_folder):
    split = open_source(photo_folder).splits["train"]
    seen = [(f, a) for b in split.batches(5) for f, a in zip(b.files, b.images)]
    assert [f for f, _ in seen] == split.files
    for f, a in seen:
        np.testing.assert_array_equal(a, np.asarray(Image.open(f).convert("RGB")))


def test_split_folder_names_any_case_and_aliases(tmp_path, rng):
    for name in ("Train", "validation", "TEST"):
        write_jpeg(tmp_path / name / "x" / "a.jpg", rng)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.txt").write_text("hi")
    src = open_source(tmp_path)
    assert list(src.splits) == ["train", "val", "test"]
    assert {os.path.basename(f) for f, _ in src.skipped} == {"notes", "README.txt"}


def test_two_folders_for_one_split_is_an_error(tmp_path, rng):
    write_jpeg(tmp_path / "val" / "a.jpg", rng)
    write_jpeg(tmp_path / "valid" / "a.jpg", rng)
    with pytest.raises(SourceError, match="'val' and 'valid'"):
        open_source(tmp_path)


def test_no_split_folders_gives_split_all_with_classes(tmp_path, rng):
    write_jpeg(tmp_path / "b" / "1.jpg", rng)
    write_jpeg(tmp_path / "a" / "deep" / "er" / "2.JPEG", rng)  # recursive, any case
    write_jpeg(tmp_path / "a" / "1.png", rng)
    src = open_source(tmp_path)
    assert list(src.splits) == ["all"] and src.class_names == ["a", "b"]
    files = [os.path.relpath(f, tmp_path) for f in src.splits["all"].files]
    # Keras order: by folder path, then by name.
    assert files == ["a/1.png", "a/deep/er/2.JPEG", "b/1.jpg"]
    assert src.splits["all"].labels.tolist() == [0, 0, 1]


def test_images_directly_in_a_folder_have_no_label(tmp_path, rng):
    for i in range(3):
        write_jpeg(tmp_path / f"{i}.jpg", rng)
    src = open_source(tmp_path)
    assert src.class_names is None and src.splits["all"].labels is None and len(src.splits["all"]) == 3


def test_loose_images_beside_class_folders_are_skipped_like_keras(tmp_path, rng):
    write_jpeg(tmp_path / "cls" / "1.jpg", rng)
    write_jpeg(tmp_path / "loose.jpg", rng)
    src = open_source(tmp_path)
    assert len(src.splits["all"]) == 1
    assert (str(tmp_path / "loose.jpg"), "not inside a class folder") in src.skipped


def test_hidden_and_other_files_are_skipped_and_counted(tmp_path, rng):
    write_jpeg(tmp_path / "c" / "1.jpg", rng)
    write_jpeg(tmp_path / "c" / ".hidden.jpg", rng)
    write_jpeg(tmp_path / ".cache" / "2.jpg", rng)
    (tmp_path / "c" / "labels.csv").write_text("x")
    src = open_source(tmp_path)
    assert src.class_names == ["c"] and len(src.splits["all"]) == 1
    reasons = {os.path.basename(f): r for f, r in src.skipped}
    assert reasons == {".hidden.jpg": "hidden", "labels.csv": "not an image file"}


def test_classes_are_the_union_over_splits(tmp_path, rng):
    write_jpeg(tmp_path / "train" / "a" / "1.jpg", rng)
    write_jpeg(tmp_path / "train" / "c" / "1.jpg", rng)
    write_jpeg(tmp_path / "val" / "b" / "1.jpg", rng)
    src = open_source(tmp_path)
    assert src.class_names == ["a", "b", "c"]
    assert src.splits["val"].labels.tolist() == [1]


def test_symlink_loop_does_not_hang(tmp_path, rng):
    write_jpeg(tmp_path / "c" / "1.jpg", rng)
    os.symlink(tmp_path / "c", tmp_path / "c" / "loop")
    src = open_source(tmp_path)
    assert len(src.splits["all"]) == 1
    assert any("symlink loop" in r for _, r in src.skipped)


def test_symlinked_copies_are_followed(tmp_path, rng):
    write_jpeg(tmp_path / "data" / "c" / "1.jpg", rng)
    os.symlink(tmp_path / "data" / "c", tmp_path / "data" / "d")
    assert len(open_source(tmp_path / "data").splits["all"]) == 2


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="1 other files skipped"):
        open_source(tmp_path / "txt")


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "nope")


def test_single_image_and_color_modes(tmp_path, rng):
    p = write_jpeg(tmp_path / "one.jpg", rng, size=(9, 7))
    src = open_source(p)
    assert src.kind == "image" and list(src.splits) == ["all"]
    assert stacked(src.splits["all"]).shape == (1, 7, 9, 3)
    gray = open_source(p, color="gray")
    assert gray.channels == 1
    np.testing.assert_array_equal(stacked(gray.splits["all"])[0, :, :, 0], np.asarray(Image.open(p).convert("L")))


def test_size_resizes_with_draft(tmp_path, rng):
    p = write_jpeg(tmp_path / "big.jpg", rng, size=(200, 100))
    a = stacked(open_source(p, size=(50, 30)).splits["all"])
    assert a.shape == (1, 30, 50, 3)


# ---------------------------------------------------------------- arrays


def test_mnist_layout(mnist_npz):
    path, arrays = mnist_npz
    src = open_source(path)
    assert src.kind == "npz" and list(src.splits) == ["train", "test"]
    assert src.channels == 1 and src.max_value == 255 and src.color == "keep"
    for split in ("train", "test"):
        s = src.splits[split]
        np.testing.assert_array_equal(stacked(s, 7), arrays[f"x_{split}"][..., None])
        np.testing.assert_array_equal(s.labels, arrays[f"y_{split}"])
        assert s.shape == (8, 8, 1)


def test_stored_members_are_random_access_and_compressed_ones_stream(mnist_npz, mnist_npz_compressed):
    assert open_source(mnist_npz[0]).splits["train"]._x._data_start is not None
    path, arrays = mnist_npz_compressed
    split = open_source(path).splits["train"]
    assert split._x._data_start is None
    np.testing.assert_array_equal(stacked(split, 7), arrays["x_train"][..., None])
    # reading again, or out of order, restarts the stream
    np.testing.assert_array_equal(split.read(3, 5).images, arrays["x_train"][3:5, :, :, None])
    np.testing.assert_array_equal(split.read(1, 2).images, arrays["x_train"][1:2, :, :, None])


def test_other_npz_layouts(tmp_path, rng):
    x = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "splits.npz", x_train=x, x_val=x[:2], y_val=np.arange(2))
    src = open_source(tmp_path / "splits.npz")
    assert list(src.splits) == ["train", "val"] and src.splits["train"].labels is None
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(5))
    assert list(open_source(tmp_path / "xy.npz").splits) == ["all"]
    np.savez(tmp_path / "lone.npz", images=x)
    np.testing.assert_array_equal(stacked(open_source(tmp_path / "lone.npz").splits["all"]), x)
    np.save(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(stacked(open_source(tmp_path / "a.npy").splits["all"]), x)


def test_pickled_npz_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SourceError, match="never unpickles"):
        open_source(tmp_path / "p.npz")


def test_bad_npz_files(tmp_path, rng):
    np.savez(tmp_path / "none.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(SourceError, match="no image arrays.*found a, b"):
        open_source(tmp_path / "none.npz")
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 2, 2), np.uint8), y=np.zeros(4))
    with pytest.raises(SourceError, match="4 labels for 3 images"):
        open_source(tmp_path / "len.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match="not a valid .npz"):
        open_source(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 2), np.uint8))
    with pytest.raises(SourceError, match="not \\(N, H, W\\)"):
        open_source(tmp_path / "shape.npz")
    np.savez(tmp_path / "chw.npz", x=np.zeros((3, 3, 8, 8), np.uint8))
    with pytest.raises(SourceError, match="channels-first"):
        open_source(tmp_path / "chw.npz")


def test_corrupt_compressed_member(tmp_path, rng):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=rng.integers(0, 256, (50, 16, 16), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("x.npy")
    mid = info.header_offset + 30 + len("x.npy") + info.compress_size // 2
    data[mid:mid + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    src = open_source(path)
    with pytest.raises(SourceError, match="c.npz:x"):
        stacked(src.splits["all"], 50)


def test_nan_in_float_pixels_is_an_error(tmp_path):
    x = np.zeros((4, 2, 2), np.float32)
    x[2, 1, 1] = np.nan
    np.savez(tmp_path / "f.npz", x=x)
    src = open_source(tmp_path / "f.npz")
    assert src.max_value is None
    with pytest.raises(SourceError, match="image 2 holds NaN"):
        stacked(src.splits["all"])


def test_array_options_that_do_not_apply(mnist_npz):
    with pytest.raises(OptionError, match="--size"):
        open_source(mnist_npz[0], size=(4, 4))
    with pytest.raises(OptionError, match="1 channel"):
        open_source(mnist_npz[0], color="rgb")
    with pytest.raises(OptionError, match="no split 'val'"):
        open_source(mnist_npz[0]).split("val")


def test_gray_with_size_converts_like_pillow_after_draft(tmp_path):
    # colour gradients: libjpeg's own grayscale output (its Y channel) differs
    # from convert("L") of the decoded RGB at a few pixels
    y, x = np.mgrid[0:480, 0:800]
    a = np.stack([x * 255 // 800, y * 255 // 480, (x + y) % 256], -1).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(a).save(p, quality=90)
    got = stacked(open_source(p, color="gray", size=(200, 120)).splits["all"])[0, :, :, 0]
    im = Image.open(p)
    im.draft("RGB", (200, 120))
    want = np.asarray(im.convert("L").resize((200, 120), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, want)


def test_an_empty_array_is_an_error(tmp_path):
    np.savez(tmp_path / "e.npz", x_train=np.zeros((0, 3, 3), np.uint8), x_test=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(SourceError, match=r"e\.npz:x_train: holds no images"):
        open_source(tmp_path / "e.npz")


def test_compressed_members_read_the_same_with_zlib_or_isal(mnist_npz_compressed, monkeypatch):
    import zlib

    from imgnorm import sources
    path, arrays = mnist_npz_compressed
    assert sources._inflate is not zlib  # ISA-L is installed with imgnorm
    fast = stacked(open_source(path).splits["train"], 7)
    monkeypatch.setattr(sources, "_inflate", zlib)
    np.testing.assert_array_equal(stacked(open_source(path).splits["train"], 7), fast)
    np.testing.assert_array_equal(fast, arrays["x_train"][..., None])
