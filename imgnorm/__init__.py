"""imgnorm: exact, streaming pixel statistics and normalization of image datasets.

The data path: :mod:`imgnorm.sources` (readers) -> :mod:`imgnorm.stats`
(running statistics) -> :mod:`imgnorm.transforms` -> :mod:`imgnorm.store`
(HDF5), joined by :mod:`imgnorm.pipeline`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public names, imported on first use: `imgnorm --help` and the command
# line's start-up (which sets up the process before numpy loads, see
# __main__.py) do not pay for numpy and h5py.
_EXPORTS = {
    "ImageError": "errors", "ImgnormError": "errors", "OptionError": "errors", "OutputError": "errors",
    "SourceError": "errors", "StatsFileError": "errors",
    "compute_stats": "pipeline",
    "Batch": "sources", "Source": "sources", "Split": "sources", "open_source": "sources",
    "RunningStats": "stats", "merge_documents": "stats", "read_stats_document": "stats",
    "stats_document": "stats",
}

__all__ = [
    "__version__", "Batch", "ImageError", "ImgnormError", "OptionError", "OutputError", "RunningStats",
    "Source", "SourceError", "Split", "StatsFileError", "compute_stats", "merge_documents", "open_source",
    "read_stats_document", "stats_document",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
