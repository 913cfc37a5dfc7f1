"""Peer: the plain numpy + h5py script (float64 mean/std, standardize, write)."""
import sys

import h5py
import numpy as np

src, out = sys.argv[1:3]
with np.load(src) as d:
    x_train, y_train, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
xf = x_train.astype(np.float64)
mean, std = xf.mean(), xf.std()
with h5py.File(out, "w") as f:
    f["train/x"] = ((xf - mean) / std).astype(np.float32)[..., None]
    f["train/y"] = y_train
    f["test/x"] = ((x_test.astype(np.float64) - mean) / std).astype(np.float32)[..., None]
    f["test/y"] = y_test
