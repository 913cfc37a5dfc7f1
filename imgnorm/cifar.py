"""CIFAR-10 and CIFAR-100 "python version" batches, read with a restricted unpickler.

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta``; ``cifar-100-python/`` holds ``train``,
``test`` and ``meta``. Each batch is a pickled dict: ``data`` a (N, 3072)
uint8 array of planar rows (1024 red, 1024 green, 1024 blue values of a
32x32 image), ``labels`` (CIFAR-100: ``fine_labels`` and ``coarse_labels``).
Images come out as torchvision and Keras give them:
``data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)``.

A pickle can run any code while it loads. These are read by
:class:`SafeUnpickler`, which builds only the builtin containers, strings,
bytes and numbers, and numpy arrays (``ndarray``, ``dtype`` and numpy's own
array reconstructors): a pickle that asks for anything else is refused
before the object is made, never executed.
"""

from __future__ import annotations

import os
import pickle
import re

import numpy as np

from .errors import SourceError, show_path

# What a pickled numpy array may ask for (numpy 1 and 2 module names; protocols 2..5).
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes under Python 3
}
SIDE = 32
ROW = 3 * SIDE * SIDE


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a global imgnorm does not build."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that makes only builtin values and numpy arrays.

    ``find_class`` is the one door through which a pickle reaches code
    (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ`` and the extension
    registry all pass through it): anything outside the list is refused.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"asks for {module}.{name}")

    def persistent_load(self, pid):
        raise UnsafePickleError("asks for a persistent object")


def load_pickle(path: str) -> dict:
    """A CIFAR batch as a dict with ``str`` keys, unpickled safely.

    Raises :class:`SourceError` naming the file for an unsafe, damaged or
    unexpected pickle.
    """
    try:
        with open(path, "rb") as f:
            # encoding="bytes", as Keras reads them: the files were pickled by
            # Python 2, whose str (the pixel bytes) must stay bytes
            obj = SafeUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as e:
        raise SourceError(f"{show_path(path)}: refused: the pickle {e}, which a CIFAR batch never does; "
                          "it was not loaded. Get the file from its original source") from None
    except OSError as e:
        raise SourceError(f"{show_path(path)}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # damaged pickles raise many types
        raise SourceError(f"{show_path(path)}: not a readable CIFAR pickle ({str(e).strip() or type(e).__name__})") \
            from None
    if not isinstance(obj, dict):
        raise SourceError(f"{show_path(path)}: holds a {type(obj).__name__}, not a CIFAR batch (a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def is_cifar_folder(path: str) -> bool:
    """A folder as ``cifar-10-batches-py/`` or ``cifar-100-python/`` is unpacked."""
    def has(name):
        return os.path.isfile(os.path.join(path, name))
    return (has("data_batch_1") or has("test_batch")) and not os.path.isdir(os.path.join(path, "train")) \
        or has("meta") and (has("train") or has("test"))


def batch_files(path: str) -> tuple[str, dict[str, list[str]], str | None]:
    """``(kind, split -> batch files in order, meta file or None)`` of a CIFAR folder."""
    names = os.listdir(path)
    if "meta" in names and ("train" in names or "test" in names):
        splits = {s: [os.path.join(path, s)] for s in ("train", "test") if s in names}
        return "cifar100", splits, os.path.join(path, "meta")
    numbered = sorted((int(m.group(1)), n) for n in names if (m := re.fullmatch(r"data_batch_(\d+)", n)))
    splits = {}
    if numbered:
        splits["train"] = [os.path.join(path, n) for _, n in numbered]
    if "test_batch" in names:
        splits["test"] = [os.path.join(path, "test_batch")]
    meta = os.path.join(path, "batches.meta")
    return "cifar10", splits, meta if os.path.isfile(meta) else None


def class_names(meta: str | None, key: str) -> list[str] | None:
    """The class names of ``key`` (``label_names``, ``fine_label_names``...) from a meta pickle."""
    if meta is None:
        return None
    d = load_pickle(meta)
    names = d.get(key)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise SourceError(f"{show_path(meta)}: has no list of class names {key!r}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` of one batch file, checked."""
    d = load_pickle(path)
    data = d.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise SourceError(f"{show_path(path)}: 'data' is a {what}; a CIFAR batch holds (N, 3072) uint8 rows")
    if label_key not in d:
        keys = ", ".join(sorted(k for k in d if "label" in k)) or "none"
        raise SourceError(f"{show_path(path)}: no {label_key!r} in the batch (label keys: {keys})")
    raw = d[label_key]
    if not isinstance(raw, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in raw):
        raise SourceError(f"{show_path(path)}: {label_key!r} is not a list of integer class indices")
    labels = np.asarray(raw, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise SourceError(f"{show_path(path)}: {len(labels)} labels for {len(data)} images")
    if labels.size and labels.min() < 0:
        raise SourceError(f"{show_path(path)}: label {int(labels.min())} is negative; class indices are 0 or more")
    return data, labels


class CifarBatches:
    """The batch files of one split as one array of (N, 32, 32, 3) uint8 images.

    Offers what :class:`imgnorm.sources.ArraySplit` reads from an ``.npz``
    member. Every batch is unpickled once when opened (to count and label its
    images) and again when its rows are read; one batch is held at a time.
    """

    def __init__(self, files: list[str], label_key: str):
        self.files = files
        self.where = show_path(os.path.dirname(files[0]) or ".") + ":" + os.path.basename(files[0]) + \
            ("..." if len(files) > 1 else "")
        self.label_key = label_key
        counts, labels = [], []
        for f in files:
            data, lab = _batch(f, label_key)
            counts.append(len(data))
            labels.append(lab)
        self.labels = np.concatenate(labels)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shape = (int(self._starts[-1]), SIDE, SIDE, 3)
        self.dtype = self.stored_dtype = np.dtype(np.uint8)
        self._held: tuple[int, np.ndarray] | None = None  # (batch index, its data)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def random_access(self) -> bool:
        return False  # each read unpickles its batch

    def _data(self, k: int) -> np.ndarray:
        if self._held is None or self._held[0] != k:
            self._held = None  # let the previous batch go before the next is loaded
            data, labels = _batch(self.files[k], self.label_key)
            if len(data) != self._starts[k + 1] - self._starts[k]:
                raise SourceError(f"{show_path(self.files[k])}: changed while imgnorm was reading it")
            self._held = (k, data)
        return self._held[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop``, shape (n, 32, 32, 3), channels last as torchvision and Keras give them."""
        from .npz import _lock_of
        with _lock_of(self):  # the held batch is this object's state
            return self._read(start, stop)

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, SIDE, SIDE, 3), np.uint8)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        row = start
        while row < stop:
            data = self._data(k)
            lo, hi = row - self._starts[k], min(stop, self._starts[k + 1]) - self._starts[k]
            out[row - start:row - start + hi - lo] = data[lo:hi].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
            row += hi - lo
            k += 1
        if stop == len(self):
            self._held = None
        return out

    def __getstate__(self):  # the held batch does not travel to another process
        state = dict(self.__dict__)
        state["_held"] = None
        state.pop("_lock", None)
        return state
