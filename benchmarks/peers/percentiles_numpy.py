"""Peer: numpy on the whole split in memory: np.percentile (linear method), median, IQR, MAD."""
import json
import sys

import numpy as np

Q = [0.5, 1, 5, 25, 50, 75, 95, 99, 99.5]
out = {}
with np.load(sys.argv[1]) as d:
    for key in d.files:
        if not key.startswith("x_"):
            continue
        x = d[key].ravel()
        p = np.percentile(x, Q + [25, 75])
        med = np.median(x)
        out[key[2:]] = {"percentiles": [float(v) for v in p[:-2]], "median": float(med),
                        "iqr": float(p[-1] - p[-2]), "mad": float(np.median(np.abs(x - med)))}
print(json.dumps(out))
