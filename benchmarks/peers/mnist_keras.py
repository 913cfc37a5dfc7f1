"""Peer: Keras' ImageDataGenerator (keras-preprocessing), feature-wise center and
std normalization, fit on train, one flow batch of each whole split, h5py write."""
import sys

import h5py
import numpy as np
from keras_preprocessing.image import ImageDataGenerator

src, out = sys.argv[1:3]
with np.load(src) as d:
    x_train, y_train, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
x_train = x_train[..., None].astype(np.float32)
x_test = x_test[..., None].astype(np.float32)
gen = ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
gen.fit(x_train)
with h5py.File(out, "w") as f:
    f["train/x"] = next(gen.flow(x_train, batch_size=len(x_train), shuffle=False))
    f["train/y"] = y_train
    f["test/x"] = next(gen.flow(x_test, batch_size=len(x_test), shuffle=False))
    f["test/y"] = y_test
