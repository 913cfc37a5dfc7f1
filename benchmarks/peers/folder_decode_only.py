"""The ceiling: decode every file of the folder in N processes and do nothing
else. decoder 'imgnorm' is imgnorm's own decode() (its fast JPEG path);
'pillow' is Image.open(...).convert('RGB')."""
import multiprocessing
import sys

import numpy as np
from PIL import Image

from imgnorm.decode import decode
from imgnorm.sources import open_source


def pillow(path):
    return np.asarray(Image.open(path).convert("RGB"))


def run(args):
    fn, files = args
    for f in files:
        fn(f)
    return len(files)


if __name__ == "__main__":
    root, workers, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fn = decode if which == "imgnorm" else pillow
    files = [f for s in open_source(root).splits.values() for f in s.files]
    chunks = [(fn, files[i:i + 16]) for i in range(0, len(files), 16)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        print(sum(pool.imap(run, chunks)))
