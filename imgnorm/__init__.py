"""imgnorm: exact, streaming pixel statistics and normalization of image datasets.

The data path: :mod:`imgnorm.sources` (readers) -> :mod:`imgnorm.stats`
(running statistics) -> :mod:`imgnorm.transforms` (the :class:`Scaler`) ->
:mod:`imgnorm.store` (HDF5; :mod:`imgnorm.zarr_store` Zarr), joined by :mod:`imgnorm.pipeline` (plan, fit,
write, as tasks over shards of a source); :mod:`imgnorm.whiten` fits and
applies ZCA / PCA whitening on the same stages.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public names, imported on first use: `imgnorm --help` and the command
# line's start-up (which sets up the process before numpy loads, see
# __main__.py) do not pay for numpy and h5py.
_EXPORTS = {
    "open_source": "sources", "Source": "sources", "Split": "sources", "Batch": "sources",
    "compute_stats": "pipeline", "transform_to_hdf5": "pipeline", "plan_write": "pipeline",
    "Scaler": "transforms", "Whitener": "whiten", "whiten_to_hdf5": "whiten",
    "RunningStats": "stats", "stats_document": "stats", "merge_documents": "stats",
    "read_stats_document": "stats", "write_stats_document": "stats", "check_stats_document": "stats",
    "ImgnormError": "errors", "SourceError": "errors", "ImageError": "errors", "DataError": "errors",
    "StatsFileError": "errors", "OutputError": "errors", "OptionError": "errors", "MissingExtraError": "errors",
    "ImgnormWarning": "errors",
}

__all__ = [
    "__version__",
    # read a dataset
    "open_source", "Source", "Split", "Batch",
    # statistics and scaling
    "compute_stats", "Scaler", "RunningStats", "Whitener",
    # write scaled arrays
    "transform_to_hdf5", "plan_write", "whiten_to_hdf5",
    # stats documents
    "stats_document", "merge_documents", "read_stats_document", "write_stats_document", "check_stats_document",
    # errors
    "ImgnormError", "SourceError", "ImageError", "DataError", "StatsFileError", "OutputError", "OptionError",
    "MissingExtraError", "ImgnormWarning",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
