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
    assert {os.path.basename(f) for f, _ in src.ignored} == {"notes", "README.txt"}
    assert src.skipped == []


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
    assert (str(tmp_path / "loose.jpg"), "not inside a class folder") in src.ignored


def test_hidden_and_other_files_are_skipped_and_counted(tmp_path, rng):
    write_jpeg(tmp_path / "c" / "1.jpg", rng)
    write_jpeg(tmp_path / "c" / ".hidden.jpg", rng)
    write_jpeg(tmp_path / ".cache" / "2.jpg", rng)
    (tmp_path / "c" / "labels.csv").write_text("x")
    src = open_source(tmp_path)
    assert src.class_names == ["c"] and len(src.splits["all"]) == 1
    reasons = {os.path.basename(f): r for f, r in src.ignored}
    assert reasons == {".cache": "hidden", ".hidden.jpg": "hidden", "labels.csv": "not an image file"}


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
    assert [(os.path.basename(f), "not followed" in r) for f, r in src.skipped] == [("loop", True)]


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


def test_size_resizes(tmp_path, rng):
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


def test_gray_with_draft_converts_like_pillow_after_draft(tmp_path):
    # colour gradients: libjpeg's own grayscale output (its Y channel) differs
    # from convert("L") of the decoded RGB at a few pixels
    y, x = np.mgrid[0:480, 0:800]
    a = np.stack([x * 255 // 800, y * 255 // 480, (x + y) % 256], -1).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(a).save(p, quality=90)
    got = stacked(open_source(p, color="gray", size=(200, 120), draft=True).splits["all"])[0, :, :, 0]
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

    from imgnorm import npz as sources
    path, arrays = mnist_npz_compressed
    assert sources._inflate is not zlib  # ISA-L is installed with imgnorm
    fast = stacked(open_source(path).splits["train"], 7)
    monkeypatch.setattr(sources, "_inflate", zlib)
    np.testing.assert_array_equal(stacked(open_source(path).splits["train"], 7), fast)
    np.testing.assert_array_equal(fast, arrays["x_train"][..., None])


# ------------------------------------------------ what the layout means


def test_symlink_to_an_ancestor_above_the_root_is_not_followed(photo_folder):
    """`ln -s ../.. photos/train/cat/root` must not count val images into train."""
    before = open_source(photo_folder)
    os.symlink("../..", photo_folder / "train" / "cat" / "root")
    src = open_source(photo_folder)
    assert src.splits["train"].files == before.splits["train"].files
    assert src.splits["train"].labels.tolist() == before.splits["train"].labels.tolist()
    assert [(os.path.relpath(f, photo_folder), "ancestor" in r) for f, r in src.skipped] == [
        ("train/cat/root", True)]


def test_symlink_to_the_parent_class_folder_keeps_labels(tmp_path, rng):
    """`ln -s .. src/a/up` must not store class b's images with class a's label."""
    for cls in "ab":
        for i in range(2):
            write_jpeg(tmp_path / "src" / cls / f"{i}.jpg", rng)
    os.symlink("..", tmp_path / "src" / "a" / "up")
    src = open_source(tmp_path / "src")
    split = src.splits["all"]
    assert [os.path.relpath(f, tmp_path / "src") for f in split.files] == ["a/0.jpg", "a/1.jpg", "b/0.jpg",
                                                                          "b/1.jpg"]
    assert split.labels.tolist() == [0, 0, 1, 1]
    assert [os.path.basename(f) for f, _ in src.skipped] == ["up"]


def test_symlinks_between_sibling_folders_end(tmp_path, rng):
    write_jpeg(tmp_path / "a" / "1.jpg", rng)
    write_jpeg(tmp_path / "b" / "2.jpg", rng)
    os.symlink("../b", tmp_path / "a" / "to_b")
    os.symlink("../a", tmp_path / "b" / "to_a")
    src = open_source(tmp_path)
    files = [os.path.relpath(f, tmp_path) for f in src.splits["all"].files]
    assert files == ["a/1.jpg", "a/to_b/2.jpg", "b/2.jpg", "b/to_a/1.jpg"]
    assert sorted(os.path.relpath(f, tmp_path) for f, r in src.skipped if "loop" in r) == [
        "a/to_b/to_a", "b/to_a/to_b"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_one_file_in_two_splits_is_leakage(tmp_path, rng, link):
    a = write_jpeg(tmp_path / "train" / "c" / "a.jpg", rng)
    write_jpeg(tmp_path / "train" / "c" / "b.jpg", rng)
    (tmp_path / "val" / "c").mkdir(parents=True)
    (os.symlink if link == "symlink" else os.link)(a, tmp_path / "val" / "c" / "x.jpg")
    with pytest.raises(SourceError, match=r"train/c/a\.jpg \(split train\) and .*val/c/x\.jpg \(split val\) "
                                          r"are the same file"):
        open_source(tmp_path)


def test_the_same_file_twice_in_one_split_is_allowed(tmp_path, rng):
    """Symlinked copies inside one split (oversampling, the benchmarks) are not leakage."""
    write_jpeg(tmp_path / "train" / "c" / "a.jpg", rng)
    os.symlink(tmp_path / "train" / "c", tmp_path / "train" / "d")
    write_jpeg(tmp_path / "val" / "c" / "v.jpg", rng)
    assert len(open_source(tmp_path).splits["train"]) == 2


def test_broken_symlink_to_an_image_is_an_error_or_skipped(tmp_path, rng):
    write_jpeg(tmp_path / "c" / "a.jpg", rng)
    os.symlink(tmp_path / "gone.jpg", tmp_path / "c" / "b.jpg")
    os.symlink(tmp_path / "gone.txt", tmp_path / "c" / "notes.txt")
    with pytest.raises(SourceError, match=r"c/b\.jpg: cannot read image \(a broken symbolic link\).*--on-error skip"):
        open_source(tmp_path)
    src = open_source(tmp_path, on_error="skip")
    assert len(src.splits["all"]) == 1
    assert [os.path.basename(f) for f, _ in src.skipped] == ["b.jpg"]
    assert ("notes.txt", "broken symbolic link") in [(os.path.basename(f), r) for f, r in src.ignored]


def test_non_utf8_file_names_are_listed(tmp_path, rng):
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1, not UTF-8
    write_jpeg(tmp_path / "c" / name, rng)
    src = open_source(tmp_path)
    assert os.fsencode(src.splits["all"].files[0]).endswith(b"caf\xe9.jpg")


# ------------------------------------------------ labels and arrays


@pytest.mark.parametrize("y, message", [
    (np.eye(4)[[0, 1, 2, 3, 0]], "labels of shape \\(5, 4\\) look one-hot"),
    (np.array(["a", "b", "c", "d", "e"]), "labels are strings"),
    (np.array([0, 1, np.nan, 2, 3]), "label 2 is nan"),
    (np.array([0, 1, 0.5, 2, 3]), "label 2 is 0.5, not a whole number"),
    (np.array([0, 1, -1, 2, 3]), "label 2 is -1; class indices must be 0 or more"),
    (np.zeros((5, 2, 2), np.int64), "labels of shape \\(5, 2, 2\\)"),
])
def test_labels_must_be_class_indices(tmp_path, rng, y, message):
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (5, 4, 4), dtype=np.uint8), y_train=y)
    with pytest.raises(SourceError, match=r"d\.npz:y_train: " + message):
        open_source(tmp_path / "d.npz")


def test_integral_float_and_column_labels_are_indices(tmp_path, rng):
    x = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0.0, 3.0, 1.0, 2.0]),
             x_test=x, y_test=np.array([[1], [0], [2], [2]], np.uint8))  # Keras' CIFAR labels are (N, 1)
    src = open_source(tmp_path / "d.npz")
    assert src.splits["train"].labels.tolist() == [0, 3, 1, 2] and src.splits["train"].labels.dtype == np.int64
    assert src.splits["test"].labels.tolist() == [1, 0, 2, 2]


def test_label_count_is_checked_from_the_header_before_reading(tmp_path, rng, monkeypatch):
    from imgnorm import npz
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
             y_train=np.zeros(1000, np.int64))
    monkeypatch.setattr(npz.NpyMember, "load_all", lambda self: pytest.fail("labels read before the check"))
    with pytest.raises(SourceError, match="1000 labels for 5 images"):
        open_source(tmp_path / "d.npz")


def test_a_small_npz_declaring_millions_of_labels_stays_small(tmp_path):
    """A 0.2 MB file whose y header declares 30 million int64 labels (240 MB) is
    refused without allocating them."""
    import io
    import subprocess
    import sys

    path = tmp_path / "huge_y.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        buf = io.BytesIO()
        np.save(buf, np.zeros((5, 4, 4), np.uint8))
        zf.writestr("x_train.npy", buf.getvalue())
        info = zipfile.ZipInfo("y_train.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False,
                                                        "shape": (30_000_000,)})
            f.write(head.getvalue())
            zero = bytes(1 << 22)
            for _ in range(30_000_000 * 8 // len(zero)):
                f.write(zero)
            f.write(bytes(30_000_000 * 8 % len(zero)))
    assert path.stat().st_size < 1 << 20
    # VmHWM, this process's own peak: ru_maxrss would carry over pytest's through fork and exec
    code = ("import re, sys\n"
            "from imgnorm.sources import open_source\n"
            "from imgnorm.errors import SourceError\n"
            "try:\n    open_source(sys.argv[1])\nexcept SourceError as e:\n    print(e)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    message, peak_kib = out.stdout.splitlines()
    assert "30000000 labels for 5 images" in message
    assert int(peak_kib) < 150 * 1024, peak_kib  # the labels alone would be 240 MB


def test_npz_with_two_members_of_one_name_is_refused(tmp_path, rng):
    import io
    import warnings
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the point
        for _ in range(2):
            buf = io.BytesIO()
            np.save(buf, rng.integers(0, 256, (3, 4, 4), dtype=np.uint8))
            zf.writestr("x_train.npy", buf.getvalue())
    with pytest.raises(SourceError, match="dup.npz: holds two arrays named 'x_train'"):
        open_source(path)


def test_big_endian_integers_keep_their_type_and_maximum(tmp_path, rng):
    x = rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16)
    np.savez(tmp_path / "be.npz", x_train=x.astype(">u2"), y_train=np.arange(6).astype(">i4"))
    src = open_source(tmp_path / "be.npz")
    assert src.dtype == np.uint16 and src.max_value == 65535
    np.testing.assert_array_equal(stacked(src.splits["train"]), x[..., None])
    assert src.splits["train"].labels.tolist() == list(range(6))


@pytest.mark.parametrize("shape", [(5, 0, 8), (5, 8, 0), (5, 0, 0, 3)])
def test_images_without_pixels_are_refused(tmp_path, shape):
    np.savez(tmp_path / "z.npz", x_train=np.zeros(shape, np.uint8))
    with pytest.raises(SourceError, match=r"z\.npz:x_train: images of \d+x\d+ pixels .* hold no pixels"):
        open_source(tmp_path / "z.npz")


def test_folder_paths_are_held_compactly_and_behave_as_a_list(tmp_path):
    import pickle

    from imgnorm.sources import PathList

    names = [str(tmp_path / "a" / f"{i}.jpg") for i in range(1000)] + [os.fsdecode(b"/x/caf\xe9.jpg")]
    pl = PathList(names)
    assert len(pl) == 1001 and list(pl) == names and pl == names and pl[-1] == names[-1]
    assert pl[3:6] == names[3:6] and pl[::500] == names[::500]
    assert os.fsencode(pl[-1]) == b"/x/caf\xe9.jpg"  # not UTF-8: kept exactly
    assert pl + ["z"] == names + ["z"] and ["z"] + pl == ["z"] + names
    with pytest.raises(IndexError):
        pl[1001]
    assert pickle.loads(pickle.dumps(pl)) == names  # as it travels to Dask workers
    # one buffer of the paths' bytes and one offset each, not a str object per path
    assert len(pl._blob) == sum(len(os.fsencode(n)) for n in names) and pl._offsets.nbytes == 8 * 1002


# Run in a fresh interpreter: the test process has other threads by then (Dask's,
# earlier tests'), and with other threads alive the listing stays in-process.
_CHILD_LISTING = r"""
import os, sys, threading
from imgnorm import sources
from imgnorm.errors import ImgnormError, SourceError
from imgnorm.workers import in_child

seen = []
real = sources._Walk.entries
sources._Walk.entries = lambda self, *a: seen.append(os.getpid()) or real(self, *a)
src = sources.open_source(sys.argv[1])
assert seen == [], seen  # listed elsewhere: the listing's leftovers never were this process's
assert len(src.splits["train"]) == 4 and src.class_names == ["a", "b"]
assert list(src.splits["train"].labels) == [0, 0, 1, 1]
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
try:  # another thread might hold a lock a forked child would need: listed here
    assert len(sources.open_source(sys.argv[1]).splits["train"]) == 4 and set(seen) == {os.getpid()}
finally:
    stop.set()
    t.join()

def raises(fn, *args):
    try:
        in_child(fn, *args)
    except ImgnormError as e:
        return e
    raise AssertionError("no error")

def unpicklable():
    e = SourceError("cannot list")
    e.handle = lambda: None  # a lambda does not pickle
    raise e

def plain():
    raise SourceError("cannot list")

e = raises(plain)
assert type(e) is SourceError and str(e) == "cannot list", e
e = raises(unpicklable)
assert str(e) == "SourceError: cannot list", e
e = raises(os._exit, 3)
assert "ended without an answer" in str(e), e
assert in_child(sum, [1, 2, 3]) == 6
print("ok")
"""


def test_a_folder_is_listed_in_a_child_process_whose_errors_reach_the_caller(tmp_path, rng):
    import subprocess
    import sys

    for i in range(4):
        write_jpeg(tmp_path / "src" / "train" / ("a" if i % 2 else "b") / f"{i}.jpg", rng)
    r = subprocess.run([sys.executable, "-c", _CHILD_LISTING, str(tmp_path / "src")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
