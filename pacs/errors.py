"""The domain errors of the archive. Only the protocol adapters map them to statuses."""

from __future__ import annotations


class PacsError(Exception):
    """Base class of every domain error."""


class ConfigError(PacsError):
    """A setting is missing or invalid."""


class InvalidInput(PacsError):
    """The request or object is malformed (unparseable, missing or invalid UID, too big)."""


class DuplicateConflict(PacsError):
    """An instance with this SOP Instance UID is stored with different content."""


class NotFound(PacsError):
    """Nothing matches the request."""


class NotAuthorised(PacsError):
    """The caller may not do this."""


class StorageUnavailable(PacsError):
    """Storage or index cannot be reached; the sender may retry later."""


class StorageFull(PacsError):
    """No space left for new objects."""


class UnknownDestination(PacsError):
    """A C-MOVE destination AE title is not configured."""
