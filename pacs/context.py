"""Who is asking: every service call receives a :class:`Caller` (audit and access control)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallerKind = Literal["dicom", "http", "cli", "system"]


@dataclass(frozen=True)
class Caller:
    """The origin of a request: a DICOM peer, an HTTP user, the command line or the system."""

    kind: CallerKind
    name: str
    address: str = ""

    @classmethod
    def dicom(cls, ae_title: str, address: str) -> Caller:
        return cls("dicom", ae_title.strip(), address)

    @classmethod
    def cli(cls, name: str = "pacs") -> Caller:
        return cls("cli", name)

    @classmethod
    def system(cls, name: str = "system") -> Caller:
        return cls("system", name)

    def __str__(self) -> str:
        where = f"@{self.address}" if self.address else ""
        return f"{self.kind}:{self.name}{where}"
