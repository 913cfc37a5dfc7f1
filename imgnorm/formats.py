"""The choices an output is written with: scaling methods, array layouts and
compressions, checked in one place (by the planners and by both writers).

Kept apart from :mod:`imgnorm.transforms` so that the writers
(:mod:`imgnorm.store`, :mod:`imgnorm.zarr_store`) need not import it.
"""

from __future__ import annotations

from .errors import OptionError

METHODS = ("normalize", "center", "standardize")
LAYOUTS = ("nhwc", "nchw")  # Keras, PyTorch
COMPRESSIONS = ("none", "gzip", "lzf")


def check_layout_and_compression(layout: str, compression: str) -> None:
    """An :class:`OptionError` naming the option when either is not one of the choices."""
    if layout not in LAYOUTS:
        raise OptionError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}", option="--layout")
    if compression not in COMPRESSIONS:
        raise OptionError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}",
                          option="--compression")
