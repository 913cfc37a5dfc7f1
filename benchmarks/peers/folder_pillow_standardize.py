"""Peer: a Pillow loop that resizes, stacks, standardizes per channel and writes."""
import os
import sys

import h5py
import numpy as np
from PIL import Image

root, out, side = sys.argv[1], sys.argv[2], int(sys.argv[3])


def load(split):
    xs = []
    for dirpath, _, names in sorted(os.walk(os.path.join(root, split), followlinks=True)):
        for name in sorted(names):
            if name.lower().endswith((".jpg", ".jpeg")):
                im = Image.open(os.path.join(dirpath, name)).convert("RGB")
                xs.append(np.asarray(im.resize((side, side), Image.Resampling.BILINEAR)))
    return np.stack(xs)


train = load("train").astype(np.float64)
mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
with h5py.File(out, "w") as f:
    f["train/x"] = ((train - mean) / std).astype(np.float32)
    del train
    f["val/x"] = ((load("val").astype(np.float64) - mean) / std).astype(np.float32)
