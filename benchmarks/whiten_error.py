"""The covariance's error against an exact rational reference (for the bench notes).

Exact: the centred matrix (1/N) sum (x - mean)(x - mean)^T of the flattened
training images, from integer sums with Python's integers and Fractions.
Compared: imgnorm's float64 matrix (before its decomposition) and Keras'
float32 ``sigma`` (keras-preprocessing's own arithmetic, replayed).
"""

from __future__ import annotations

import sys

import numpy as np


def exact_covariance(x: np.ndarray) -> np.ndarray:
    """float64 of the exact rational centred matrix, for uint8 images x (n, h, w, c)."""
    n, c = len(x), x.shape[-1]
    flat = x.reshape(n, -1).astype(np.int64)
    d = flat.shape[1]
    s = flat.sum(axis=0)  # exact in int64
    ss = np.zeros((d, d), dtype=object)
    for i in range(0, n, 4096):  # int64 products, exact (each sum < 2**63), added as Python ints
        b = flat[i:i + 4096].astype(np.float64)
        ss += (b.T @ b).astype(np.int64).astype(object)  # float64 exact: < 2**53 per 4096-row block
    npix = n * (d // c)
    total = [int(s[k::c].sum()) for k in range(c)]  # per channel
    t = np.array([total[i % c] for i in range(d)], dtype=object)
    s = s.astype(object)
    # N (NP)^2 C_ab = S_ab (NP)^2 - NP (s_a T_b + T_a s_b) + N T_a T_b
    num = ss * npix * npix - npix * (np.outer(s, t) + np.outer(t, s)) + n * np.outer(t, t)
    den = n * npix * npix
    return np.vectorize(lambda v: v / den, otypes=[np.float64])(num)  # int / int: correctly rounded


def main(path: str) -> None:
    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    from imgnorm.whiten import Whitener

    with np.load(path) as f:
        x = f["x_train"]
    x = x[..., None] if x.ndim == 3 else x
    exact = exact_covariance(x)
    w = Whitener().fit(x)
    mine = w._centred_matrix(*w._channel_moments(), 1.0)[0]
    xf = x.astype(np.float32)  # keras-preprocessing's fit, float32 throughout
    xf -= np.mean(xf, axis=(0, 1, 2))
    flat = xf.reshape(len(xf), -1)
    keras = np.dot(flat.T, flat) / flat.shape[0]
    scale = np.abs(exact).max()
    print(f"covariance error against the exact rational matrix (max |error| / max |entry|): "
          f"imgnorm {np.abs(mine - exact).max() / scale:.2g}, keras-preprocessing "
          f"{np.abs(keras - exact).max() / scale:.2g}")


if __name__ == "__main__":
    main(sys.argv[1])
