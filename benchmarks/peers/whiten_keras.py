"""Peer: keras-preprocessing's ImageDataGenerator(zca_whitening=True): fit on x_train, standardize
x_train and x_test (in memory, float32), write them with h5py."""
import sys
import warnings

import h5py
import numpy as np
from keras_preprocessing.image import ImageDataGenerator

warnings.simplefilter("ignore")  # "zca_whitening overrides featurewise_center"
src, out = sys.argv[1:3]
with np.load(src) as d:
    x_train, x_test = d["x_train"], d["x_test"]
if x_train.ndim == 3:
    x_train, x_test = x_train[..., None], x_test[..., None]
gen = ImageDataGenerator(zca_whitening=True, zca_epsilon=1e-6)
gen.fit(x_train)
with h5py.File(out, "w") as f:
    f["train/x"] = gen.standardize(x_train.astype(np.float32))
    f["test/x"] = gen.standardize(x_test.astype(np.float32))
