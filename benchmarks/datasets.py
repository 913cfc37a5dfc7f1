"""Synthetic datasets made on the spot, so that the demo and the benchmarks
never download anything.

- ``make_digits_npz``: an MNIST-shaped ``.npz`` (Keras ``mnist.npz`` layout) of
  28x28 uint8 digits drawn with Pillow's font, jittered in position, size,
  rotation and stroke; mostly zero background, so it compresses like MNIST.
- ``make_shapes_folder``: a small JPEG folder in the train/val/<class> layout.
- ``make_photo_copies``: a folder of symlinked copies of a real photo folder.
- ``make_cifar_like_npz``: CIFAR-10-shaped 32x32x3 uint8 images (smooth
  colour blobs and noise, so neighbouring pixels correlate as in photos).
- ``make_scans_npz``: 16-bit single-channel "scans" (smooth blobs on a dark
  field with noise, CT-like spread over ~40000 levels).

Run ``python benchmarks/datasets.py OUTDIR`` to make the demo data.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def _digit_glyphs(scale: int = 4) -> list[Image.Image]:
    font = ImageFont.load_default(size=22 * scale)
    glyphs = []
    for d in range(10):
        im = Image.new("L", (28 * scale, 28 * scale))
        ImageDraw.Draw(im).text((14 * scale, 14 * scale), str(d), fill=255, font=font, anchor="mm",
                                stroke_width=scale)
        glyphs.append(im)
    return glyphs


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit images (n, 28, 28) uint8 and their labels (n,) uint8."""
    rng = np.random.default_rng(seed)
    glyphs = _digit_glyphs()
    labels = rng.integers(0, 10, n).astype(np.uint8)
    # Jitter a few hundred templates and reuse them: fast, yet varied.
    n_templates = min(n, 600)
    templates = np.empty((n_templates, 28, 28), np.uint8)
    tlabels = rng.integers(0, 10, n_templates)
    for i, d in enumerate(tlabels):
        g = glyphs[d].rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
        g = g.filter(ImageFilter.MaxFilter(int(rng.choice([1, 3, 5]))))
        s = rng.uniform(0.65, 0.9)
        small = g.resize((int(28 * s), int(28 * s)), Image.Resampling.LANCZOS)
        canvas = Image.new("L", (28, 28))
        canvas.paste(small, (int(rng.integers(0, 28 - small.width + 1)), int(rng.integers(0, 28 - small.height + 1))))
        templates[i] = np.asarray(canvas)
    by_digit = [np.flatnonzero(tlabels == d) for d in range(10)]
    x = np.empty((n, 28, 28), np.uint8)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        x[idx] = templates[rng.choice(by_digit[d], len(idx))]
    return x, labels


def make_cifar_like_npz(path: str, n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> str:
    """``x_train`` (n_train, 32, 32, 3) and ``x_test`` uint8 with labels 0..9, uncompressed as Keras' arrays load."""
    rng = np.random.default_rng(seed)

    def images(n):
        out = np.empty((n, 32, 32, 3), np.uint8)
        for a in range(0, n, 1000):
            m = min(1000, n - a)
            low = rng.normal(0, 1, (m, 5, 5, 3)).astype(np.float32)
            up = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)[:, 4:36, 4:36]  # blocky colour fields
            smooth = (up + np.roll(up, 4, axis=1) + np.roll(up, 4, axis=2) + np.roll(up, (4, 4), axis=(1, 2))) / 4
            x = 120 + 45 * smooth + rng.normal(0, 12, (m, 32, 32, 3)).astype(np.float32)
            out[a:a + m] = np.clip(x, 0, 255).astype(np.uint8)
        return out

    np.savez(path, x_train=images(n_train), y_train=rng.integers(0, 10, n_train).astype(np.uint8),
             x_test=images(n_test), y_test=rng.integers(0, 10, n_test).astype(np.uint8))
    return path


def make_scans_npz(path: str, n: int = 1500, size: int = 128, seed: int = 0) -> str:
    """An ``.npz`` with ``x_train`` of shape (n, size, size), uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((n, size, size), np.uint16)
    for i in range(n):
        img = np.full((size, size), 1000.0, np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            img += rng.uniform(5000, 30000) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += rng.normal(0, 400, img.shape).astype(np.float32)
        x[i] = np.clip(img, 0, 65535).astype(np.uint16)
    np.savez(path, x_train=x, y_train=rng.integers(0, 4, n))
    return path


def make_digits_npz(path: str, n_train: int = 60000, n_test: int = 10000, seed: int = 0) -> str:
    x_train, y_train = make_digits(n_train, seed)
    x_test, y_test = make_digits(n_test, seed + 1)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def make_shapes_folder(root: str, per_class: dict[str, int] | None = None, seed: int = 0) -> str:
    """JPEGs of coloured shapes on noisy backgrounds, ``root/{train,val}/<shape>/*.jpg``."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 20, "val": 5}
    for split, n in per_class.items():
        for shape in ("circle", "square", "triangle"):
            os.makedirs(os.path.join(root, split, shape), exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(64, 160)), int(rng.integers(64, 160))
                bg = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
                im = Image.fromarray((bg * 0.3 + rng.integers(0, 180, 3)).astype(np.uint8))
                draw = ImageDraw.Draw(im)
                color = tuple(int(c) for c in rng.integers(0, 256, 3))
                x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
                x1, y1 = int(x0 + w // 2), int(y0 + h // 2)
                if shape == "circle":
                    draw.ellipse((x0, y0, x1, y1), fill=color)
                elif shape == "square":
                    draw.rectangle((x0, y0, x1, y1), fill=color)
                else:
                    draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=color)
                im.save(os.path.join(root, split, shape, f"{shape}_{i:03d}.jpg"), quality=90)
    return root


def make_photo_copies(photos: str, root: str, copies: int) -> str:
    """``root/{train,val}/<class>/copyK`` symlinked to the real photo folders."""
    photos = os.path.abspath(photos)
    for split in sorted(os.listdir(photos)):
        for cls in sorted(os.listdir(os.path.join(photos, split))):
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            for k in range(copies):
                link = os.path.join(d, f"copy{k:02d}")
                if not os.path.islink(link):
                    os.symlink(os.path.join(photos, split, cls), link)
    return root


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--test", type=int, default=1000)
    a = p.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    make_digits_npz(os.path.join(a.outdir, "digits.npz"), a.train, a.test)
    make_shapes_folder(os.path.join(a.outdir, "shapes"))
    print(f"made {a.outdir}/digits.npz and {a.outdir}/shapes/")
