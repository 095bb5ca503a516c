"""Domain outcome -> DIMSE status, one table per service (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5,
C.4.3.1.4). The only place that knows DIMSE status codes."""

from __future__ import annotations

from pacs.errors import (
    DuplicateConflict,
    InvalidInput,
    NotAuthorised,
    NotFound,
    PacsError,
    StorageFull,
    StorageUnavailable,
    UnknownDestination,
)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00

# C-STORE failures (PS3.4 B.2.3; 0xC0xx is the implementation-specific "cannot understand")
STORE_OUT_OF_RESOURCES = 0xA700
STORE_CANNOT_UNDERSTAND = 0xC000
STORE_DUPLICATE_CONFLICT = 0xC0D1
STORE_NOT_AUTHORISED = 0x0124  # Refused: not authorised (PS3.7 C.4.2)

STORE_STATUS: dict[type[PacsError], int] = {
    InvalidInput: STORE_CANNOT_UNDERSTAND,
    DuplicateConflict: STORE_DUPLICATE_CONFLICT,
    StorageUnavailable: STORE_OUT_OF_RESOURCES,
    StorageFull: STORE_OUT_OF_RESOURCES,
    NotAuthorised: STORE_NOT_AUTHORISED,
}

# C-FIND failures (PS3.4 C.4.1.1.4)
FIND_OUT_OF_RESOURCES = 0xA700
FIND_IDENTIFIER_MISMATCH = 0xA900
FIND_UNABLE_TO_PROCESS = 0xC000

FIND_STATUS: dict[type[PacsError], int] = {
    InvalidInput: FIND_IDENTIFIER_MISMATCH,
    StorageUnavailable: FIND_OUT_OF_RESOURCES,
    NotAuthorised: FIND_UNABLE_TO_PROCESS,
}

# C-MOVE / C-GET failures (PS3.4 C.4.2.1.5, C.4.3.1.4)
RETRIEVE_STATUS: dict[type[PacsError], int] = {
    InvalidInput: 0xA900,
    UnknownDestination: 0xA801,
    StorageUnavailable: 0xA701,
    StorageFull: 0xA702,
    NotFound: 0xC000,
    NotAuthorised: 0xC000,
}


def status_for(table: dict[type[PacsError], int], exc: PacsError, default: int = 0xC000) -> int:
    for kind in type(exc).__mro__:
        if kind in table:
            return table[kind]  # type: ignore[index]
    return default
