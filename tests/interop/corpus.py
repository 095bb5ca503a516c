"""The files the DCMTK interop tests send, and the bytes DCMTK's storescu puts on the wire.

Two kinds of source files, written once per test module:

- copies of pydicom's bundled test files covering every transfer syntax (native little and big
  endian, deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE), multi-frame and
  RGB objects. Several of them share one SOP Instance UID (``MR_small*``), so each copy gets a
  fresh one (and a Study/Series UID where the original has none); nothing else changes.
- small synthetic studies from :mod:`pacs.demo` with Vietnamese UTF-8 names (``ISO_IR 192``),
  a MONOCHROME1 CR among them, and two patients whose IDs and names hold the SQL wildcard
  characters ``%`` and ``_`` and a quote.

storescu does not send a file's bytes: it parses the file and encodes the data set again (it
drops trailing padding, for one). "Stored byte-for-byte" therefore means "equal to what storescu
sent", which :func:`build_corpus` records once by sending every file to a DCMTK ``storescp
+B`` (bit-preserving). storescu proposes exactly each file's own transfer syntax (an
association profile, ``-xf``), so nothing is converted on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID, generate_uid

from pacs.demo import PatientSpec, StudySpec, generate_study
from tests.conftest import testdata
from tests.infra import free_port
from tests.interop import dcmtk

PROFILE = "Exact"

# pydicom test file -> what it stands for
TRANSFER_SYNTAX_FILES: dict[str, str] = {
    "CT_small.dcm": "Explicit VR Little Endian, CT",
    "MR_small_implicit.dcm": "Implicit VR Little Endian",
    "MR_small_bigendian.dcm": "Explicit VR Big Endian",
    "image_dfl.dcm": "Deflated Explicit VR Little Endian",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG Baseline, YBR_FULL, ISO_IR 192",
    "JPGExtended.dcm": "JPEG Extended (12 bit), NumberOfFrames 1",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG Lossless SV1, RGB",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS Lossless",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS Near-Lossless",
    "MR_small_jp2klossless.dcm": "JPEG 2000 Lossless",
    "JPEG2000.dcm": "JPEG 2000",
    "MR_small_RLE.dcm": "RLE Lossless",
    "SC_rgb_rle_2frame.dcm": "RLE Lossless, RGB, 2 frames",
    "rtdose.dcm": "Implicit VR Little Endian, RT Dose, 15 frames",
    "SC_rgb_small_odd.dcm": "Explicit VR Little Endian, RGB, odd length",
}
EXPECTED_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
}

PATIENTS: dict[str, PatientSpec] = {
    "an": PatientSpec("Nguyễn^Văn An", "BN001", date(1970, 5, 1), "M"),
    "bich": PatientSpec("Trần^Thị Bích", "BN002", date(1985, 2, 3), "F"),
    # SQL wildcards and a quote in values: they must match literally
    "pct": PatientSpec("O'Brien^100%_Đức", "PCT%_'1", date(1990, 1, 1), "M"),
    # a decoy that the same values would match if '%' and '_' were SQL wildcards
    "decoy": PatientSpec("Brien^100ab Đức", "PCTxy'1", date(1991, 1, 1), "M"),
}
# study key -> (patient, shape, study date)
STUDIES: dict[str, tuple[str, StudySpec, date]] = {
    "an_ct": ("an", StudySpec("CT", series_count=2, instances_per_series=2, rows=32,
                              columns=32), date(2024, 3, 15)),
    "an_mr": ("an", StudySpec("MR", rows=32, columns=32), date(2025, 6, 1)),
    "bich_cr": ("bich", StudySpec("CR", rows=32, columns=32), date(2024, 11, 20)),
    "pct_cr": ("pct", StudySpec("CR", rows=16, columns=16), date(2023, 7, 7)),
    "decoy_cr": ("decoy", StudySpec("CR", rows=16, columns=16), date(2023, 8, 8)),
}


@dataclass
class Source:
    """One file the tests send, with what storescu sends for it."""

    name: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: UID
    study_key: str = ""  # the key in STUDIES for synthetic studies
    sent: bytes = b""  # the data set bytes storescu puts on the wire for this file

    @property
    def compressed(self) -> bool:
        return self.transfer_syntax_uid.is_compressed


@dataclass
class Corpus:
    directory: Path
    config: Path  # storescu association profile PROFILE: one context per (class, syntax)
    sources: dict[str, Source] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Source:
        return self.sources[name]

    @property
    def transfer_syntax_sources(self) -> list[Source]:
        return [s for s in self.sources.values() if not s.study_key]

    def study(self, key: str) -> list[Source]:
        return [s for s in self.sources.values() if s.study_key == key]

    def studies(self, *keys: str) -> list[Source]:
        return [s for key in keys for s in self.study(key)]

    def by_uid(self, sop_instance_uid: str) -> Source:
        return next(s for s in self.sources.values() if s.sop_instance_uid == sop_instance_uid)

    def storescu_args(self, files: Iterable[Path]) -> list[str]:
        """storescu options proposing each file's own syntax, then the files."""
        return ["-xf", str(self.config), PROFILE, *(str(f) for f in files)]


def _source(name: str, path: Path, study_key: str = "") -> Source:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Source(name, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                  str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                  UID(ds.file_meta.TransferSyntaxUID), study_key)


def _copy_test_file(name: str, out: Path) -> Source:
    ds = pydicom.dcmread(testdata(name))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, generate_uid(entropy_srcs=["interop", name, keyword]))
    uid = generate_uid(entropy_srcs=["interop", name])
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    path = out / name
    ds.save_as(path)
    return _source(name, path)


def _write_studies(out: Path) -> list[Source]:
    sources = []
    for seed, (key, (patient, spec, day)) in enumerate(STUDIES.items()):
        rng = np.random.default_rng([2026, seed])
        for ds in generate_study(rng, spec, PATIENTS[patient], day):
            name = f"{key}_{int(ds.SeriesNumber)}_{int(ds.InstanceNumber)}"
            path = out / f"{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sources.append(_source(name, path, key))
    return sources


def _write_profile(path: Path, sources: Sequence[Source]) -> None:
    """A DCMTK association profile with one presentation context per (SOP class, syntax)."""
    pairs = list(dict.fromkeys((s.sop_class_uid, str(s.transfer_syntax_uid)) for s in sources))
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for index, ts in enumerate(syntaxes):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for number, (sop_class, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", f"[{PROFILE}]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))


def build_corpus(directory: Path, env: dict[str, str]) -> Corpus:
    """Write the source files and record what storescu sends for each (see module doc)."""
    files = directory / "files"
    files.mkdir(parents=True)
    sources = [_copy_test_file(name, files) for name in TRANSFER_SYNTAX_FILES]
    sources += _write_studies(files)
    corpus = Corpus(directory, directory / "storescu.cfg", {s.name: s for s in sources})
    assert len({s.sop_instance_uid for s in sources}) == len(sources)
    assert {str(s.transfer_syntax_uid) for s in sources} >= EXPECTED_SYNTAXES
    _write_profile(corpus.config, sources)

    port = free_port()
    with dcmtk.storescp(directory / "sent", port, "+xa", env=env, ae_title="CAPTURE") as scp:
        result = dcmtk.run("storescu", "-d", "-nh", *dcmtk.NET_OPTIONS, "-aec", "CAPTURE",
                           dcmtk.HOST, str(port),
                           *corpus.storescu_args(s.path for s in sources), env=env)
        received = scp.received()
    statuses = [r.status for r in result.responses("C-STORE RSP")]
    assert statuses == [0] * len(sources), str(result)
    for source in sources:
        raw = received[source.sop_instance_uid].read_bytes()
        meta = pydicom.dcmread(received[source.sop_instance_uid], stop_before_pixels=True)
        assert meta.file_meta.TransferSyntaxUID == source.transfer_syntax_uid, (
            f"storescu converted {source.name}")
        source.sent = dcmtk.dataset_bytes(raw)
    return corpus
