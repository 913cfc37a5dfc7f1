"""Reading a written output back, whichever format it is: an HDF5 file
(:mod:`imgnorm.store`) or a Zarr store (:mod:`imgnorm.zarr_store`). Used by
``inspect`` and :meth:`imgnorm.Scaler.from_hdf5`.
"""

from __future__ import annotations

import os

from .outputs import is_zarr


def is_store_dir(path: str) -> bool:
    """Whether ``path`` is a Zarr store (a folder named .zarr, or one holding zarr.json)."""
    return os.path.isdir(path) and (is_zarr(path) or os.path.isfile(os.path.join(path, "zarr.json")))


def read_output_info(path: str | os.PathLike) -> dict:
    """:func:`imgnorm.store.read_h5_info` of an HDF5 file, or its equal for a Zarr store."""
    path = os.fspath(path)
    if is_store_dir(path):
        from .zarr_store import read_zarr_info

        return read_zarr_info(path)
    from .store import read_h5_info

    return read_h5_info(path)


def check_output(path: str) -> list[str]:
    """What is missing from a written output (a Zarr store's chunks, an HDF5
    file's part files), one line each; empty when complete."""
    if is_store_dir(path):
        from .zarr_store import check_zarr

        return check_zarr(path)
    from .store import check_parts

    return check_parts(path)


def iter_stored(path: str, split: str, batch_size: int = 256):
    """Yield ``<split>/x`` in (n, ...) blocks, a few chunks at a time."""
    if os.path.isdir(path):
        from .zarr_store import iter_zarr

        return iter_zarr(path, split, batch_size)
    from .store import iter_h5

    return iter_h5(path, split, batch_size)
