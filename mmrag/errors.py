"""Exceptions users see. Each carries a message that says what to do."""


class MmragError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ImageError(MmragError):
    """An image could not be read (corrupt, truncated, too large, not an image)."""


class CorpusError(MmragError):
    """A corpus could not be read, or is empty."""


class ModelUnavailableError(MmragError):
    """Model weights are not available (offline, not installed, wrong directory)."""


class IndexError_(MmragError):
    """An index is missing, incompatible or corrupt."""


class InvalidInputError(MmragError, ValueError):
    """A value given by the user is out of range or malformed (an empty query, ``k`` < 1, an
    unknown target). A ``ValueError`` too, so callers that validate with ``except ValueError``
    keep working; the CLI reports it as ``error: ...`` (exit 2), the service as HTTP 400."""


class UnknownNameError(MmragError, KeyError):
    """A registry was asked for a name it does not have (``--generator bogus``). A ``KeyError``
    too, so ``except KeyError`` callers keep working; its text is the message, without the
    quotes ``KeyError`` adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
