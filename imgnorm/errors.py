"""imgnorm's exceptions: one small hierarchy, turned into Click errors by the CLI."""

from __future__ import annotations

import os


class ImgnormError(Exception):
    """Base class of every error imgnorm raises on purpose (exit code 1)."""


class SourceError(ImgnormError):
    """A dataset source is missing, empty or holds data imgnorm cannot read."""


class ImageError(SourceError):
    """One image file could not be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{show_path(path)}: {printable(reason)}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # travels from decoding workers to the parent
        return (type(self), (self.path, self.reason))


class DataError(ImgnormError, ValueError):
    """Arrays given to the library have a shape, type or values it cannot take."""


class StatsFileError(ImgnormError):
    """A stats document is malformed, of another version or does not fit the data."""


class OutputError(ImgnormError):
    """The output cannot be written (exists already, folder missing, disk full)."""


class ImgnormWarning(UserWarning):
    """Something the run adjusted or left out; the command line prints it on stderr."""


class OptionError(ImgnormError):
    """Options that are wrong or conflict with each other (exit code 2)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    def __reduce__(self):
        return (type(self), (str(self), self.option))


class MissingExtraError(OptionError):
    """An optional extra that the input, output or option needs is not installed
    (exit code 2); the message names the extra (``pip install 'imgnorm[...]'``)."""


def show_path(path: str | os.PathLike) -> str:
    """A path for messages: bytes that are not UTF-8 shown as ``\\xNN`` escapes."""
    return printable(os.fspath(path))


def printable(text: str) -> str:
    """Text that any terminal takes: undecodable file-name bytes (surrogate
    escapes) become ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
