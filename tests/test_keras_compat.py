"""Against the reference: Keras' own directory listing and ImageDataGenerator
(from the keras-preprocessing package, a test dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from imgnorm.pipeline import transform_to_hdf5
from imgnorm.transforms import Scaler
from imgnorm.sources import open_source

from conftest import write_jpeg

keras_image = pytest.importorskip("keras_preprocessing.image")


def test_folder_listing_matches_flow_from_directory(tmp_path, rng):
    root = tmp_path / "data"
    layout = {"train": {"b_cls": 3, "a_cls": 2, "c": 4}, "val": {"b_cls": 1, "a_cls": 2, "c": 1}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                sub = "nested/" if i % 2 else ""
                write_jpeg(root / split / cls / f"{sub}{i:02d}.JPG", rng)
            (root / split / cls / "notes.txt").write_text("x")
    src = open_source(root)
    gen = keras_image.ImageDataGenerator()
    for split in ("train", "val"):
        it = gen.flow_from_directory(str(root / split), target_size=(8, 8), batch_size=1, shuffle=False)
        ours = src.splits[split]
        assert len(ours) == it.samples
        assert src.class_names == sorted(it.class_indices, key=it.class_indices.get)
        assert ours.labels.tolist() == it.classes.tolist()
        assert [str(p) for p in ours.files] == [str(root / split / f) for f in it.filenames]


@pytest.mark.parametrize("channels", [1, 3])
def test_standardize_matches_image_data_generator(tmp_path, rng, channels):
    x = rng.integers(0, 256, (60, 6, 5, channels), dtype=np.uint8)
    t = rng.integers(0, 256, (20, 6, 5, channels), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=t)
    result = transform_to_hdf5(open_source(tmp_path / "d.npz"), str(tmp_path / "o.h5"),
                               Scaler("standardize", per_channel=True, epsilon=1e-6))
    gen = keras_image.ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
    gen.fit(x.astype(np.float32))
    import h5py
    with h5py.File(tmp_path / "o.h5") as f:
        for name, data in (("train", x), ("test", t)):
            want = next(gen.flow(data.astype(np.float32), batch_size=len(data), shuffle=False))
            # Keras sums in float32; imgnorm is exact: equal to float32 precision
            np.testing.assert_allclose(f[name]["x"][...], want, rtol=0, atol=4 * np.finfo(np.float32).eps * 4)
    assert result["rows"] == {"train": 60, "test": 20}
