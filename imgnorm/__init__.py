"""imgnorm: exact, streaming pixel statistics and normalization of image datasets.

The data path: :mod:`imgnorm.sources` (readers) -> :mod:`imgnorm.stats`
(running statistics) -> :mod:`imgnorm.transforms` -> :mod:`imgnorm.store`
(HDF5), joined by :mod:`imgnorm.pipeline`.
"""

__version__ = "0.1.0"

from .errors import ImageError, ImgnormError, OptionError, OutputError, SourceError, StatsFileError
from .pipeline import compute_stats
from .sources import Batch, Source, Split, open_source
from .stats import RunningStats, merge_documents, read_stats_document, stats_document

__all__ = [
    "__version__", "Batch", "ImageError", "ImgnormError", "OptionError", "OutputError", "RunningStats",
    "Source", "SourceError", "Split", "StatsFileError", "compute_stats", "merge_documents", "open_source",
    "read_stats_document", "stats_document",
]
