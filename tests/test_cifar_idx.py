"""CIFAR-10/100 python batches and IDX files: the datasets people bring, read as torchvision and Keras read them."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from imgnorm.cli import cli
from imgnorm.errors import SourceError
from imgnorm.pipeline import compute_stats
from imgnorm.sources import open_source

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(rng, n, label_keys=("labels",), classes=10, bytes_keys=True):
    d = {"batch_label": b"training batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         "filenames": [b"img_%d.png" % i for i in range(n)]}
    for k in label_keys:
        d[k] = [int(v) for v in rng.integers(0, classes if k != "coarse_labels" else 20, n)]
    # The real files were pickled by Python 2: str keys that unpickle as bytes
    return {(k.encode() if bytes_keys else k): v for k, v in d.items()}


@pytest.fixture
def cifar10(tmp_path, rng):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = {}
    for name, n in [("data_batch_1", 7), ("data_batch_2", 5), ("data_batch_10", 3), ("test_batch", 6)]:
        batches[name] = _batch(rng, n)
        with open(root / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}, f, protocol=2)
    (root / "readme.html").write_text("<html></html>")
    return root, batches


def _torchvision_view(batches, names):
    """What torchvision's CIFAR10 does: vstack the data, reshape (N, 3, 32, 32), transpose to channels last."""
    data = np.vstack([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([batches[n][b"labels"] for n in names])
    return data, labels


def test_cifar10_folder_reads_as_torchvision_and_keras(cifar10):
    root, batches = cifar10
    src = open_source(root)
    assert src.kind == "cifar10" and list(src.splits) == ["train", "test"]
    assert src.class_names == CIFAR10_NAMES and src.dtype == np.uint8 and src.channels == 3
    # data_batch_10 after data_batch_2: numeric order
    x, y = _torchvision_view(batches, ["data_batch_1", "data_batch_2", "data_batch_10"])
    for bs in (1, 4, 15):
        got = np.concatenate([b.images for b in src.splits["train"].batches(bs)])
        np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(src.splits["train"].labels, y)
    xt, yt = _torchvision_view(batches, ["test_batch"])
    np.testing.assert_array_equal(next(src.splits["test"].batches(100)).images, xt)
    doc = compute_stats(src)
    assert doc["splits"]["train"]["per_channel"]["mean"] == list(x.reshape(-1, 3).astype(np.float64).mean(axis=0))
    assert doc["splits"]["train"]["percentiles"]["global"]["median"] == float(np.median(x))
    assert doc["provenance"]["files"]["train"]["count"] == 3


def test_cifar10_to_hdf5_and_inspect(cifar10, tmp_path):
    root, batches = cifar10
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(cli, ["normalize", str(root), "-o", str(out)])
    assert r.exit_code == 0, r.output
    x, y = _torchvision_view(batches, ["data_batch_1", "data_batch_2", "data_batch_10"])
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/x"][...], (x.astype(np.float32) / 255).astype(np.float32))
        np.testing.assert_array_equal(f["train/y"][...], y)
        assert json.loads(f.attrs["class_names"]) == CIFAR10_NAMES
    r = CliRunner().invoke(cli, ["inspect", str(root)])
    assert r.exit_code == 0
    assert "(cifar10)" in r.output and "data_batch_1, data_batch_2, data_batch_10" in r.output
    assert "readme.html: not a CIFAR batch" in r.output


@pytest.mark.parametrize("protocol, bytes_keys", [(2, True), (4, False), (5, False)])
def test_cifar100_fine_and_coarse_labels(tmp_path, rng, protocol, bytes_keys):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    b = {s: _batch(rng, n, ("fine_labels", "coarse_labels"), 100, bytes_keys) for s, n in [("train", 9), ("test", 4)]}
    for s in b:
        with open(root / s, "wb") as f:
            pickle.dump(b[s], f, protocol=protocol)
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    meta = {"fine_label_names": fine, "coarse_label_names": coarse}
    with open(root / "meta", "wb") as f:
        pickle.dump({(k.encode() if bytes_keys else k): v for k, v in meta.items()}, f, protocol=protocol)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    src = open_source(root)
    assert src.kind == "cifar100" and src.class_names == fine
    np.testing.assert_array_equal(src.splits["train"].labels, b["train"][key("fine_labels")])
    x = b["train"][key("data")].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(next(src.splits["train"].batches(100)).images, x)
    src = open_source(root, label="coarse")
    assert src.class_names == coarse
    np.testing.assert_array_equal(src.splits["test"].labels, b["test"][key("coarse_labels")])
    r = CliRunner().invoke(cli, ["stats", str(root), "--label", "coarse", "--per-class", "--json"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["splits"]["train"]["classes"]) <= set(coarse)


def test_label_option_is_for_cifar100_only(cifar10):
    r = CliRunner().invoke(cli, ["stats", str(cifar10[0]), "--label", "coarse"])
    assert r.exit_code == 2 and "CIFAR-100" in r.output


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["IMGNORM_PWNED"],))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path(__import__('os').environ['IMGNORM_PWNED']).touch()",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested", "meta"])
def test_a_malicious_cifar_pickle_is_refused_never_run(tmp_path, rng, monkeypatch, payload):
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("IMGNORM_PWNED", str(pwned))
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = _batch(rng, 3)
    evil = dict(good)
    if payload == "system":
        evil[b"labels"] = _Boom()
    elif payload == "eval":
        evil = _Eval()
    elif payload == "nested":
        evil[b"filenames"] = [b"a", {b"x": [_Boom()]}]
    for name, d in [("data_batch_1", evil if payload != "meta" else good), ("test_batch", good)]:
        with open(root / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": _Boom()} if payload == "meta" else {b"label_names": [b"a"] * 10}, f)
    for args in (["stats", str(root)], ["inspect", str(root)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1, r.output
        assert "refused: the pickle asks for" in r.output and ("system" in r.output or "eval" in r.output)
        assert "Traceback" not in r.output
    assert not pwned.exists()


def test_damaged_and_odd_cifar_batches_are_errors_naming_the_file(tmp_path, rng):
    root = tmp_path / "c"
    root.mkdir()
    cases = {
        "truncated": pickle.dumps(_batch(rng, 3), protocol=2)[:500],
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "wrong rows": pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2),
        "float data": pickle.dumps({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}, protocol=2),
        "no labels": pickle.dumps({b"data": np.zeros((3, 3072), np.uint8)}, protocol=2),
        "short labels": pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, protocol=2),
        "negative": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, protocol=2),
    }
    want = {"truncated": "not a readable CIFAR pickle", "not a dict": "not a CIFAR batch",
            "wrong rows": "(N, 3072) uint8", "float data": "(N, 3072) uint8", "no labels": "no 'labels'",
            "short labels": "2 labels for 3 images", "negative": "negative"}
    for case, data in cases.items():
        (root / "data_batch_1").write_bytes(data)
        with pytest.raises(SourceError, match="data_batch_1") as e:
            open_source(root)
        assert want[case] in str(e.value), (case, str(e.value))


# ---------------------------------------------------------------- IDX


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of ``a``, written from the format's definition (big-endian)."""
    code = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
            np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}[a.dtype]
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path, a, gz=True):
    data = idx_bytes(a)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def fashion(tmp_path, rng):
    root = tmp_path / "fashion"
    root.mkdir()
    arrays = {"train": (rng.integers(0, 256, (23, 28, 28), dtype=np.uint8), rng.integers(0, 10, 23, dtype=np.uint8)),
              "t10k": (rng.integers(0, 256, (9, 28, 28), dtype=np.uint8), rng.integers(0, 10, 9, dtype=np.uint8))}
    for prefix, (x, y) in arrays.items():
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root, arrays


def _keras_fashion(root, prefix):
    """keras.datasets.fashion_mnist.load_data's own reading of the files."""
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "rb") as lbpath:
        y = np.frombuffer(lbpath.read(), np.uint8, offset=8)
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "rb") as imgpath:
        x = np.frombuffer(imgpath.read(), np.uint8, offset=16).reshape(len(y), 28, 28)
    return x, y


def test_idx_folder_reads_as_keras_fashion_mnist(fashion):
    root, arrays = fashion
    src = open_source(root)
    assert src.kind == "idx" and list(src.splits) == ["train", "test"]
    assert src.class_names is None  # IDX files carry none
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = _keras_fashion(root, prefix)
        for bs in (1, 5, 100):
            got = np.concatenate([b.images for b in src.splits[split].batches(bs)])
            np.testing.assert_array_equal(got, x[..., None])
        np.testing.assert_array_equal(src.splits[split].labels, y)
    doc = compute_stats(src)
    x = arrays["train"][0].astype(np.float64)
    assert doc["splits"]["train"]["global"]["mean"] == x.mean()
    assert doc["splits"]["train"]["percentiles"]["global"]["median"] == float(np.median(arrays["train"][0]))


def test_one_idx_images_file_with_its_labels_beside_it(fashion, tmp_path):
    root, arrays = fashion
    src = open_source(root / "t10k-images-idx3-ubyte.gz")
    assert list(src.splits) == ["test"]
    np.testing.assert_array_equal(src.splits["test"].labels, arrays["t10k"][1])
    out = tmp_path / "f.h5"
    r = CliRunner().invoke(cli, ["standardize", str(root / "t10k-images-idx3-ubyte.gz"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    x = arrays["t10k"][0].astype(np.float64)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["test/x"][...][..., 0], ((x - x.mean()) / x.std()).astype(np.float32), rtol=0)
    r = CliRunner().invoke(cli, ["stats", str(root / "t10k-labels-idx1-ubyte.gz")])
    assert r.exit_code == 1 and "labels file" in r.output


def test_plain_idx_and_other_names_and_types(tmp_path, rng):
    root = tmp_path / "mnist"
    root.mkdir()
    x = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    write_idx(root / "train-images.idx3-ubyte", x, gz=False)  # Kaggle's dotted names, uncompressed
    write_idx(root / "train-labels.idx1-ubyte", np.arange(6, dtype=np.uint8), gz=False)
    src = open_source(root)
    np.testing.assert_array_equal(next(src.splits["train"].batches(2)).images, x[:2, :, :, None])
    np.testing.assert_array_equal(np.concatenate([b.images for b in src.splits["train"].batches(4)]), x[..., None])
    f = tmp_path / "f"
    f.mkdir()
    xf = rng.normal(size=(3, 4, 4)).astype(np.float32)
    write_idx(f / "test-images-idx3-ubyte.gz", xf)
    got = open_source(f).splits["test"].read(0, 3).images
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, xf[..., None])


def test_damaged_idx_files_are_refused_before_allocating(tmp_path, rng):
    root = tmp_path / "d"
    root.mkdir()
    x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    data = idx_bytes(x)
    p = root / "train-images-idx3-ubyte"
    cases = {
        "not idx": (b"PK\x03\x04" + data[4:], "not an IDX file"),
        "short header": (data[:10], "header ends early"),
        "truncated": (data[:-100], "truncated or damaged"),
        "trailing": (data + b"\0" * 10, "truncated or damaged"),
        # a header claiming 2**31 images in a file of four: refused from the size, nothing allocated
        "lying": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2 ** 31, 28, 28) + data[16:], "truncated or damaged"),
    }
    for case, (content, msg) in cases.items():
        p.write_bytes(content)
        with pytest.raises(SourceError, match="train-images-idx3-ubyte") as e:
            open_source(root)
        assert msg in str(e.value), case
    # gzip: the trailer's size is checked up front, the stream's end while reading
    p.unlink()
    g = root / "train-images-idx3-ubyte.gz"
    with gzip.open(g, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2 ** 31, 28, 28) + data[16:])
    with pytest.raises(SourceError, match="truncated or damaged"):
        open_source(root)
    write_idx(g, x)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))
    with pytest.raises(SourceError, match="5 labels for 4 images"):
        open_source(root)
    raw = bytearray(g.read_bytes())
    raw[-8] ^= 0xFF  # the CRC
    g.write_bytes(bytes(raw))
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceError, match="train-images-idx3-ubyte.gz.*CRC"):  # on opening or reading
        list(open_source(root).splits["train"].batches(2))


def test_two_idx_images_files_for_one_split_is_an_error(tmp_path, rng):
    root = tmp_path / "e"
    root.mkdir()
    for name in ("emnist-digits-train-images-idx3-ubyte.gz", "emnist-letters-train-images-idx3-ubyte.gz"):
        write_idx(root / name, rng.integers(0, 256, (2, 4, 4), dtype=np.uint8))
    with pytest.raises(SourceError, match="both IDX images of split 'train'"):
        open_source(root)
    src = open_source(root / "emnist-digits-train-images-idx3-ubyte.gz")
    assert list(src.splits) == ["train"] and src.splits["train"].labels is None


def test_arrays_refuse_size_and_a_colour_they_do_not_have(fashion, cifar10):
    r = CliRunner().invoke(cli, ["stats", str(fashion[0]), "--size", "8"])
    assert r.exit_code == 2 and "arrays are read as stored" in r.output
    r = CliRunner().invoke(cli, ["stats", str(cifar10[0]), "--color", "gray"])
    assert r.exit_code == 2 and "--color keep" in r.output


def test_a_torchvision_root_holding_the_cifar_folder_is_read_too(cifar10, tmp_path):
    root, batches = cifar10
    src = open_source(tmp_path)  # tmp_path/cifar-10-batches-py, as torchvision's CIFAR10(root=...) finds it
    assert src.kind == "cifar10" and src.path == str(root)
    (tmp_path / "cifar-100-python").mkdir()
    for name in ("train", "meta"):
        (tmp_path / "cifar-100-python" / name).write_bytes(b"")
    with pytest.raises(SourceError, match="holds both"):
        open_source(tmp_path)
