"""The ceiling: decode every file of the folder in N processes and do nothing
else. decoder 'imgnorm' is imgnorm's own decode() (its fast JPEG path);
'pillow' is Image.open(...).convert('RGB'). An optional fourth argument WxH
also resizes each image (imgnorm's decode with that size: full decode, then
Pillow's bilinear resize; Pillow's resize for 'pillow')."""
import multiprocessing
import sys

import numpy as np
from PIL import Image

from imgnorm.decode import decode
from imgnorm.sources import open_source


def pillow(path):
    return np.asarray(Image.open(path).convert("RGB"))


def imgnorm_resized(path, size):
    return decode(path, "rgb", size)


def pillow_resized(path, size):
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR))


def run(args):
    fn, files, size = args
    for f in files:
        fn(f) if size is None else fn(f, size)
    return len(files)


if __name__ == "__main__":
    root, workers, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size = tuple(int(v) for v in sys.argv[4].split("x")) if len(sys.argv) > 4 else None
    if size is None:
        fn = decode if which == "imgnorm" else pillow
    else:
        fn = imgnorm_resized if which == "imgnorm" else pillow_resized
    files = [f for s in open_source(root).splits.values() for f in s.files]
    chunks = [(fn, files[i:i + 16], size) for i in range(0, len(files), 16)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        print(sum(pool.imap(run, chunks)))
