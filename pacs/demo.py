"""Seeded generator of realistic synthetic DICOM studies (CT, MR, CR).

``pacs demo`` writes a few studies so that a new user sees something at once; tests and
``bench/`` use the same code. Everything comes from a seed: the same seed gives the same UIDs
(a SHA-512 of the seed path under the pydicom root, PS3.5 9.1) and the same pixel bytes.

The datasets follow the CT Image, MR Image and CR Image IODs (PS3.3 A.3, A.4, A.2): UTF-8
Vietnamese names (``ISO_IR 192``, PS3.5 6.1.2.3 and PS3.3 C.12.1.1.2), real SOP classes, a
consistent Image Plane (PS3.3 C.7.6.2) and pixels from vectorised numpy phantoms. The CR IOD has
no Frame of Reference module, so CR images carry no FrameOfReferenceUID.

Only pydicom, numpy and the standard library are imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

Modality = Literal["CT", "MR", "CR"]
Sex = Literal["M", "F", "O"]
FloatImage = npt.NDArray[np.float32]

IMPLEMENTATION_VERSION_NAME = "MINIPACS_DEMO"
SOP_CLASSES: Mapping[str, UID] = MappingProxyType(
    {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage}
)
_FIELD_OF_VIEW_MM: Mapping[str, float] = MappingProxyType({"CT": 380.0, "MR": 230.0, "CR": 430.0})
_FIRST_STUDY_DAY = date(2024, 1, 1)
_STUDY_DAYS = 731  # studies spread over two years
_CT_PADDING = -2000  # stored value outside the reconstruction circle (HU -3024)


@dataclass(frozen=True)
class PatientSpec:
    """A synthetic patient. ``name`` is in DICOM PN form, ``Family^Given``."""

    name: str
    patient_id: str
    birth_date: date
    sex: Sex


@dataclass(frozen=True)
class StudySpec:
    """Shape of one synthetic study; ``None`` fields get a realistic default per modality.

    A given ``description`` replaces the randomly chosen protocol and means "no contrast".
    """

    modality: Modality
    series_count: int = 1
    instances_per_series: int = 1
    rows: int = 256
    columns: int = 256
    slice_thickness: float = 5.0
    field_of_view: float | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in SOP_CLASSES:
            raise ValueError(f"unsupported modality {self.modality!r}")
        if self.series_count < 1 or self.instances_per_series < 1:
            raise ValueError("a study needs at least one series and one instance per series")
        if not (16 <= self.rows <= 4096 and 16 <= self.columns <= 4096):
            raise ValueError("rows and columns must be within 16..4096")
        if self.slice_thickness <= 0:
            raise ValueError("slice_thickness must be positive")

    @property
    def pixel_spacing(self) -> float:
        """Square pixel spacing in mm (PS3.3 10.7.1.3), rounded to keep DS values short."""
        fov = self.field_of_view or _FIELD_OF_VIEW_MM[self.modality]
        return round(fov / self.columns, 4)


CT_DEMO = StudySpec("CT", series_count=2, instances_per_series=20)
MR_DEMO = StudySpec("MR", series_count=3, instances_per_series=16)
CR_DEMO = StudySpec("CR", rows=512, columns=512)

_PATIENT_NAMES: tuple[tuple[str, Sex], ...] = (
    ("Nguyễn^Văn An", "M"),
    ("Trần^Thị Bích", "F"),
    ("Lê^Hoàng Đức", "M"),
    ("Phạm^Minh Châu", "F"),
    ("Đặng^Thu Hà", "F"),
    ("Võ^Quốc Bảo", "M"),
    ("Huỳnh^Ngọc Ánh", "F"),
    ("Đỗ^Đình Dũng", "M"),
    ("Bùi^Thị Hương", "F"),
    ("Hoàng^Đức Thắng", "M"),
    ("Dương^Thị Ngọc Diệp", "F"),
    ("Ngô^Quang Đạt", "M"),
)
_REFERRING_PHYSICIANS = (
    "Trần^Văn Minh^^BS.",
    "Nguyễn^Thị Lan^^ThS.BS.",
    "Đinh^Công Hậu^^BS.CKI",
    "Lê^Thị Đào^^TS.BS.",
)
_INSTITUTIONS = ("BỆNH VIỆN ĐA KHOA MINH AN", "TRUNG TÂM CHẨN ĐOÁN Y KHOA ĐẠI ĐỒNG")
_EQUIPMENT: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "CT": (("SIEMENS", "SOMATOM go.Up"), ("GE MEDICAL SYSTEMS", "Revolution ACT")),
        "MR": (("SIEMENS", "MAGNETOM Sempra"), ("Philips", "Ingenia")),
        "CR": (("FUJIFILM Corporation", "FCR PRIMA T2"), ("KONICA MINOLTA", "REGIUS 110")),
    }
)


@dataclass(frozen=True)
class _Protocol:
    description: str
    body_part: str
    contrast: bool


_PROTOCOLS: Mapping[str, tuple[_Protocol, ...]] = MappingProxyType(
    {
        "CT": (
            _Protocol("CT NGỰC KHÔNG CẢN QUANG", "CHEST", False),
            _Protocol("CT NGỰC CÓ CẢN QUANG", "CHEST", True),
            _Protocol("CT PHỔI LIỀU THẤP", "CHEST", False),
        ),
        "MR": (
            _Protocol("MRI SỌ NÃO KHÔNG TIÊM THUỐC", "HEAD", False),
            _Protocol("MRI SỌ NÃO CÓ TIÊM THUỐC ĐỐI QUANG TỪ", "HEAD", True),
        ),
        "CR": (_Protocol("X-QUANG NGỰC THẲNG", "CHEST", False),),
    }
)


@dataclass(frozen=True)
class _SeriesKind:
    """Series flavour: CT reconstruction kernel or MR weighting, with its display window."""

    description: str
    window: tuple[float, float]
    noise: float
    param: str


_CT_KINDS = (
    _SeriesKind("AX MÔ MỀM", (40.0, 400.0), 10.0, "Br40"),
    _SeriesKind("AX PHỔI", (-600.0, 1500.0), 22.0, "Bl57"),
    _SeriesKind("AX XƯƠNG", (500.0, 2000.0), 30.0, "Br64"),
)
_MR_KINDS = (
    _SeriesKind("T1 SE AX", (600.0, 1200.0), 12.0, "T1"),
    _SeriesKind("T2 TSE AX", (900.0, 1800.0), 12.0, "T2"),
    _SeriesKind("FLAIR AX", (650.0, 1300.0), 12.0, "FLAIR"),
)
_MR_CONTRAST_KIND = _SeriesKind("T1 SE AX +C", (700.0, 1400.0), 12.0, "T1C")
_CR_KINDS = (_SeriesKind("NGỰC PA", (2000.0, 3600.0), 20.0, "PA"),)

# MR tissue signal per weighting: scalp, skull, diploe, CSF, grey, white, vitreous, enhancement.
_MR_SIGNAL: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "T1": (800, 40, 700, 250, 520, 780, 150, 0),
        "T2": (500, 30, 400, 1800, 1000, 700, 1900, 0),
        "FLAIR": (600, 30, 500, 120, 850, 620, 100, 0),
        "T1C": (800, 40, 700, 250, 520, 780, 150, 1100),
    }
)
# ScanningSequence, SequenceVariant, TR, TE, TI (0 = none), echo train, sequence name.
_MR_SEQUENCE: Mapping[str, tuple[list[str], list[str], float, float, float, int, str]] = (
    MappingProxyType(
        {
            "T1": (["SE"], ["SP"], 500.0, 10.0, 0.0, 1, "se2d1"),
            "T2": (["SE"], ["SK", "SP"], 4000.0, 95.0, 0.0, 15, "tse2d1_15"),
            "FLAIR": (["SE", "IR"], ["SK", "SP", "MP"], 9000.0, 90.0, 2500.0, 16, "tir2d1_16"),
            "T1C": (["SE"], ["SP"], 500.0, 10.0, 0.0, 1, "se2d1"),
        }
    )
)


@dataclass(frozen=True)
class _Study:
    """Everything shared by the instances of one study, drawn once from the generator."""

    spec: StudySpec
    patient: PatientSpec
    start: datetime
    token: str
    protocol: _Protocol
    accession: str
    study_id: str
    referring: str
    institution: str
    equipment: tuple[str, str]

    def uid(self, *parts: object) -> str:
        """A deterministic UID for ``parts`` within this study (PS3.5 9.1)."""
        return _uid(self.token, *parts)


@dataclass(frozen=True)
class _Series:
    number: int
    kind: _SeriesKind
    uid: str
    start: datetime


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates in mm: ``x`` (1, cols) to patient left, ``y`` (rows, 1) back."""

    x: FloatImage
    y: FloatImage

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.shape[0], self.x.shape[1])


def _uid(*parts: object) -> str:
    # generate_uid joins its sources without a separator, so join them here unambiguously.
    return str(generate_uid(PYDICOM_ROOT_UID, ["|".join(str(p) for p in parts)]))


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) without float noise."""
    text = format(round(value, 4), ".10g")
    return "0" if text in ("-0", "0") else text


def random_patient(rng: np.random.Generator, patient_id: str | None = None) -> PatientSpec:
    """A patient with a Vietnamese name, ``BN`` + digits ID and an adult birth date."""
    name, sex = _PATIENT_NAMES[int(rng.integers(len(_PATIENT_NAMES)))]
    birth = date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 65 * 365)))
    pid = patient_id or f"BN{int(rng.integers(10_000_000, 100_000_000))}"
    return PatientSpec(name, pid, birth, sex)


def _new_study(
    rng: np.random.Generator, spec: StudySpec, patient: PatientSpec | None, day: date | None
) -> _Study:
    patient = patient or random_patient(rng)
    day = day or _FIRST_STUDY_DAY + timedelta(days=int(rng.integers(_STUDY_DAYS)))
    start = datetime.combine(day, time(7)) + timedelta(seconds=int(rng.integers(0, 10 * 3600)))
    protocols = _PROTOCOLS[spec.modality]
    protocol = protocols[int(rng.integers(len(protocols)))]
    if spec.description is not None:
        protocol = _Protocol(spec.description, protocol.body_part, False)
    equipment = _EQUIPMENT[spec.modality]
    return _Study(
        spec=spec,
        patient=patient,
        start=start,
        token=rng.bytes(16).hex(),
        protocol=protocol,
        accession=f"{spec.modality}{start:%y%m%d}{int(rng.integers(10_000)):04d}",
        study_id=str(int(rng.integers(1, 100_000))),
        referring=_REFERRING_PHYSICIANS[int(rng.integers(len(_REFERRING_PHYSICIANS)))],
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        equipment=equipment[int(rng.integers(len(equipment)))],
    )


def _series_list(study: _Study) -> list[_Series]:
    modality = study.spec.modality
    kinds = {"CT": _CT_KINDS, "MR": _MR_KINDS, "CR": _CR_KINDS}[modality]
    count = study.spec.series_count
    series = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        if modality == "MR" and study.protocol.contrast and count > 1 and index == count - 1:
            kind = _MR_CONTRAST_KIND  # post-contrast T1 comes last
        elif index >= len(kinds):
            kind = _SeriesKind(
                f"{kind.description} ({index // len(kinds) + 1})",
                kind.window,
                kind.noise,
                kind.param,
            )
        start = study.start + timedelta(minutes=2 + 4 * index)
        series.append(_Series(index + 1, kind, study.uid("series", index), start))
    return series


def _instance_header(study: _Study, series: _Series, number: int, sop_uid: str) -> Dataset:
    """Patient, study, series, equipment, general image and SOP common attributes."""
    spec, patient = study.spec, study.patient
    sop_class = SOP_CLASSES[spec.modality]
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    content = series.start + timedelta(seconds=number)
    day = study.start.date()
    age = (
        day.year
        - patient.birth_date.year
        - ((day.month, day.day) < (patient.birth_date.month, patient.birth_date.day))
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"] if spec.modality == "CT" else ["ORIGINAL", "PRIMARY"]
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = f"{study.start:%Y%m%d}"
    ds.SeriesDate = f"{series.start:%Y%m%d}"
    ds.ContentDate = f"{content:%Y%m%d}"
    ds.StudyTime = f"{study.start:%H%M%S}"
    ds.SeriesTime = f"{series.start:%H%M%S}"
    ds.ContentTime = f"{content:%H%M%S}"
    ds.AccessionNumber = study.accession
    ds.Modality = spec.modality
    ds.Manufacturer, ds.ManufacturerModelName = study.equipment
    ds.InstitutionName = study.institution
    ds.InstitutionalDepartmentName = "Khoa Chẩn đoán hình ảnh"
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.protocol.description
    ds.SeriesDescription = series.kind.description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = f"{patient.birth_date:%Y%m%d}"
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = study.protocol.body_part
    ds.SoftwareVersions = "minipacs-demo 1"
    ds.StudyInstanceUID = study.uid("study")
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = number
    ds.ImageComments = "Synthetic phantom (minipacs demo), not a patient image"
    if study.protocol.contrast and (spec.modality == "CT" or series.kind.param == "T1C"):
        ds.ContrastBolusAgent = "Ultravist 300" if spec.modality == "CT" else "Gadovist 1.0"
    ds.WindowCenter = _ds(series.kind.window[0])
    ds.WindowWidth = _ds(series.kind.window[1])
    return ds


def _set_pixels(
    ds: Dataset, pixels: npt.NDArray[np.int16] | npt.NDArray[np.uint16], photometric: str, bits: int
) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) for one 16-bit allocated grayscale frame."""
    signed = pixels.dtype.kind == "i"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.add_new(0x7FE00010, "OW", pixels.astype("<i2" if signed else "<u2", copy=False).tobytes())


def _set_plane(ds: Dataset, study: _Study, z: float, for_uid: str) -> None:
    """Frame of Reference and Image Plane modules for an axial head-first-supine slice."""
    spec = study.spec
    spacing = _ds(spec.pixel_spacing)
    x0 = -(spec.columns - 1) / 2 * spec.pixel_spacing
    y0 = -(spec.rows - 1) / 2 * spec.pixel_spacing
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = _ds(study.spec.slice_thickness)
    ds.SliceLocation = _ds(z)


def _grid(rows: int, cols: int, spacing: float) -> _Grid:
    x = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2) * np.float32(spacing)
    y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * np.float32(spacing)
    return _Grid(x[None, :], y[:, None])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> FloatImage:
    """Unit-variance smooth noise: a coarse Gaussian grid bilinearly upsampled by ``cell``."""
    rows, cols = shape
    low = rng.standard_normal((rows // cell + 2, cols // cell + 2), dtype=np.float32)
    fy, iy_f = np.modf(np.arange(rows, dtype=np.float32) / cell)
    fx, ix_f = np.modf(np.arange(cols, dtype=np.float32) / cell)
    iy, ix = iy_f.astype(np.intp), ix_f.astype(np.intp)
    top = low[iy][:, ix] * (1 - fx) + low[iy][:, ix + 1] * fx
    bottom = low[iy + 1][:, ix] * (1 - fx) + low[iy + 1][:, ix + 1] * fx
    field = top * (1 - fy[:, None]) + bottom * fy[:, None]
    unit: FloatImage = ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)
    return unit


def _r2(grid: _Grid, cx: float, cy: float, ax: float, ay: float) -> FloatImage:
    """Squared normalised radius of an ellipse centred at (cx, cy) mm with semi-axes ax, ay."""
    return ((grid.x - cx) / max(ax, 1e-3)) ** 2 + ((grid.y - cy) / max(ay, 1e-3)) ** 2


def _bump(t: float, start: float, stop: float) -> float:
    """0 outside (start, stop), rising to 1 in the middle: an organ's extent along z."""
    return math.sin(math.pi * (t - start) / (stop - start)) if start < t < stop else 0.0


def _ct_hu(grid: _Grid, t: float, contrast: bool, texture: FloatImage) -> FloatImage:
    """Noise-free chest CT slice in HU; ``t`` runs from lung apex (0) to upper abdomen (1)."""
    x, y = grid.x, grid.y
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[(np.abs(y - 150) < 4) & (np.abs(x) < 210)] = 250.0  # table top
    ax, ay, cy = 165.0 + 12.0 * t, 110.0 + 10.0 * t, 10.0
    body = _r2(grid, 0, cy, ax, ay)
    hu[body <= 1] = -100.0
    hu[body <= 0.93**2] = 50.0
    if t < 0.9:
        theta = np.arctan2((y - cy) / ay, x / ax)
        ribs = (body > 0.85**2) & (body <= 0.9**2) & (np.cos(9 * theta + 6 * t) > 0.2)
        hu[ribs & ~((y < cy - 0.6 * ay) & (np.abs(x) < 35))] = 700.0
    hu[body <= 0.85**2] = -80.0
    blood = 280.0 if contrast else 45.0
    liver = min(max((t - 0.55) / 0.3, 0.0), 1.0)
    if liver > 0:
        hu[_r2(grid, -0.3 * ax, cy + 0.05 * ay, 0.45 * ax * liver, 0.6 * ay * liver) <= 1] = (
            110.0 if contrast else 60.0
        )
    if t > 0.75:
        size = min((t - 0.75) / 0.15, 1.0)
        sx, sy = 0.35 * ax, cy - 0.1 * ay
        stomach = _r2(grid, sx, sy, 0.2 * ax * size, 0.25 * ay * size) <= 1
        hu[stomach] = 15.0
        hu[stomach & (y < sy - 0.1 * ay * size)] = -1000.0
        hu[_r2(grid, 0.5 * ax, cy + 0.35 * ay, 0.15 * ax * size, 0.25 * ay * size) <= 1] = 50.0
    lung = 0.0 if t >= 0.8 else math.sin(math.pi * t / 0.8) ** 0.6
    if lung > 0.05:
        for side in (-1.0, 1.0):
            r2 = _r2(grid, side * 0.46 * ax, cy - 0.06 * ay, 0.32 * ax * lung, 0.62 * ay * lung)
            mask = r2 <= 1
            hu[mask] = -860.0 + 25.0 * texture[mask]
            hu[mask & (texture > 1.5)] = 30.0  # vessels
    heart = _bump(t, 0.35, 0.8)
    if heart > 0.05:
        hx, hy = 0.12 * ax, cy - 0.2 * ay
        hu[_r2(grid, hx, hy, 0.33 * ax * heart, 0.42 * ay * heart) <= 1] = -90.0
        hu[_r2(grid, hx, hy, 0.3 * ax * heart, 0.38 * ay * heart) <= 1] = 45.0
        hu[_r2(grid, hx, hy, 0.22 * ax * heart, 0.28 * ay * heart) <= 1] = blood
    if 0.25 < t < 0.45:
        hu[_r2(grid, -0.1 * ax, cy - 0.25 * ay, 15, 15) <= 1] = blood
    if t < 0.5:
        trachea = _r2(grid, 0, cy + 0.15 * ay, 10.5, 10.5)
        hu[trachea <= 1] = 40.0
        hu[trachea <= (9 / 10.5) ** 2] = -1000.0
    hu[_r2(grid, 22, cy + 0.4 * ay, 12, 12) <= 1] = blood  # descending aorta
    _ct_spine(hu, grid, t, cy, ay)
    if t < 0.75:
        hu[_r2(grid, 0, cy - 0.88 * ay, 12, 5) <= 1] = 400.0  # sternum
    return hu


def _ct_spine(hu: FloatImage, grid: _Grid, t: float, cy: float, ay: float) -> None:
    vy = cy + 0.55 * ay
    vertebra = _r2(grid, 0, vy, 17, 17)
    hu[vertebra <= 1] = 700.0
    disc = (t * 12) % 1 < 0.12
    hu[vertebra <= (15 / 17) ** 2] = 90.0 if disc else 250.0
    canal_y = vy + 26
    hu[_r2(grid, 0, canal_y + 17, 4, 12) <= 1] = 600.0  # spinous process
    hu[_r2(grid, 0, canal_y, 13, 13) <= 1] = 600.0  # arch
    hu[_r2(grid, 0, canal_y, 8, 8) <= 1] = 20.0  # canal


def _ct_stored(
    hu: FloatImage, noise: FloatImage, outside: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int16]:
    """Stored CT values: HU + 1024 (RescaleIntercept -1024), padding outside the FOV circle."""
    stored: npt.NDArray[np.int16] = np.rint(np.clip(hu + noise, -1024, 3071) + 1024).astype(
        np.int16
    )
    stored[outside] = _CT_PADDING
    return stored


def _mr_signal(grid: _Grid, t: float, weighting: str, texture: FloatImage) -> FloatImage:
    """Noise-free axial head MR signal; ``t`` runs from the vertex (0) to the skull base (1)."""
    scalp, skull, diploe, csf, grey, white, vitreous, enhance = _MR_SIGNAL[weighting]
    scale = math.sqrt(max(0.05, 1 - ((t - 0.55) / 0.62) ** 2))
    xn, yn = grid.x / (72.0 * scale), grid.y / (92.0 * scale)
    r = np.sqrt(xn**2 + yn**2)
    theta = np.arctan2(yn, xn)
    sig = np.zeros(grid.shape, dtype=np.float32)
    sig[r <= 1] = scalp
    sig[r <= 0.95] = skull
    sig[(r > 0.905) & (r <= 0.925)] = diploe
    sig[r <= 0.885] = csf
    brain = r <= 0.86 + 0.025 * np.cos(17 * theta + 4 * t)
    sig[brain] = grey
    sig[r <= 0.66 + 0.05 * np.cos(9 * theta + 3 * t) + 0.03 * np.cos(23 * theta)] = white
    sig[(np.abs(grid.x) < 1.2) & (r <= 0.88) & (np.abs(yn) > 0.35)] = csf  # fissure
    ventricle = _bump(t, 0.3, 0.62)
    if ventricle > 0.05:
        for side in (-1.0, 1.0):
            sig[
                ((xn - side * 0.1) / (0.05 + 0.03 * ventricle)) ** 2
                + ((yn + 0.05) / (0.3 * ventricle)) ** 2
                <= 1
            ] = csf
    if 0.5 < t < 0.7:
        for side in (-1.0, 1.0):
            sig[((xn - side * 0.15) / 0.1) ** 2 + ((yn - 0.12) / 0.14) ** 2 <= 1] = grey
    if t > 0.7:
        cerebellum = (xn / 0.55) ** 2 + ((yn - 0.45) / 0.35) ** 2 <= 1
        sig[cerebellum] = np.where(np.cos(60 * r[cerebellum]) > 0, white, grey)
        sig[xn**2 + ((yn - 0.05) / 1.0) ** 2 <= 0.16**2] = white  # brainstem
    if t > 0.78:
        for side in (-1.0, 1.0):
            sig[(xn - side * 0.42) ** 2 + (yn + 0.78) ** 2 <= 0.16**2] = vitreous
    if t > 0.85:
        sig[(xn / 0.12) ** 2 + ((yn + 0.7) / 0.1) ** 2 <= 1] = 0.0  # sinus air
    if enhance:
        sig[(r > 0.885) & (r <= 0.9)] = enhance  # dura
        sig[brain & (texture > 2.2)] = enhance  # vessels
    sig *= 1 + 0.04 * texture
    sig *= np.clip(1 + 0.12 * yn, 0.8, 1.2)  # coil sensitivity
    return sig


def _mr_stored(
    signal: FloatImage, sigma: float, rng: np.random.Generator
) -> npt.NDArray[np.uint16]:
    """Magnitude image with Rician noise, 12 bits stored."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    stored: npt.NDArray[np.uint16] = np.rint(np.clip(np.hypot(real, imag), 0, 4095)).astype(
        np.uint16
    )
    return stored


def _cr_pixels(
    rows: int, cols: int, rng: np.random.Generator, shift: tuple[float, float]
) -> npt.NDArray[np.uint16]:
    """PA chest radiograph as detector exposure (high = dark in MONOCHROME1), 12 bits."""
    u = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2) / (cols / 2))[None, :] + shift[0]
    v = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / (rows / 2))[:, None] + shift[1]
    au = np.abs(u)
    width = 0.2 + 0.65 / (1 + np.exp(-(v + 0.7) / 0.05))  # neck widening into shoulders
    mu = 1.2 * np.sqrt(np.clip(1 - (u / width) ** 2, 0, 1))
    diaphragm = 0.42 + 0.18 * ((au - 0.36) / 0.3) ** 2 - 0.04 * (u < 0)
    texture = _smooth_field(rng, (rows, cols), max(rows // 64, 2))
    for side in (-1.0, 1.0):
        r2 = ((u - side * 0.36) / 0.25) ** 2 + ((v + 0.05) / 0.6) ** 2
        lung = (r2 < 1) & (v < diaphragm)
        mu -= np.where(lung, 0.7 * np.sqrt(np.clip(1 - r2, 0, 1)) - 0.05 * texture, 0)
    heart = ((u - 0.1) / 0.28) ** 2 + ((v - 0.22) / 0.22) ** 2
    mu += 0.45 * np.sqrt(np.clip(1 - heart, 0, 1))
    spine = (au < 0.09) & (v > -0.9)
    mu += np.where(spine, 0.5 * (1 - (u / 0.09) ** 2) * (1 + 0.15 * np.cos(v * 2 * np.pi * 8)), 0)
    inside = au < 0.92 * width
    thorax = inside & (au > 0.08) & (au < 0.65) & (v > -0.75) & (v < diaphragm + 0.05)
    mu += np.where(thorax & (np.cos(2 * np.pi * (v - 0.35 * au**2) * 7) > 0.55), 0.22, 0)
    mu += np.where(thorax & (np.cos(2 * np.pi * (v + 0.4 * au**2) * 5.5) > 0.6), 0.1, 0)
    clavicle = inside & (au > 0.05) & (au < 0.55) & (np.abs(v + 0.62 - 0.18 * (au - 0.1)) < 0.025)
    mu += np.where(clavicle, 0.35, 0)
    mu += np.where((v >= diaphragm) & (mu > 0.05), 0.35, 0)  # abdomen below the diaphragm
    exposure = 3950 * np.exp(-mu) * (1 + 0.05 * v) + 20 * rng.standard_normal(mu.shape)
    exposure = np.where((np.abs(u - shift[0]) > 0.97) | (np.abs(v - shift[1]) > 0.97), 80, exposure)
    stored: npt.NDArray[np.uint16] = np.rint(np.clip(exposure, 0, 4095)).astype(np.uint16)
    return stored


def _set_ct_image(ds: Dataset, study: _Study, series: _Series) -> None:
    """CT Image module attributes (PS3.3 C.8.2.1) besides the pixels."""
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = series.kind.param
    ds.ReconstructionDiameter = _ds(study.spec.pixel_spacing * study.spec.columns)
    ds.GantryDetectorTilt = "0"
    ds.WindowCenterWidthExplanation = series.kind.description


def _set_mr_image(ds: Dataset, series: _Series) -> None:
    """MR Image module attributes (PS3.3 C.8.3.1) besides the pixels."""
    scanning, variant, tr, te, ti, train, name = _MR_SEQUENCE[series.kind.param]
    ds.ScanningSequence = scanning
    ds.SequenceVariant = variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = name
    ds.RepetitionTime = _ds(tr)
    ds.EchoTime = _ds(te)
    if ti:
        ds.InversionTime = _ds(ti)
    ds.EchoTrainLength = train
    ds.MagneticFieldStrength = "1.5"
    ds.ImagingFrequency = "63.87"
    ds.ImagedNucleus = "1H"


def _set_cr_image(ds: Dataset, study: _Study) -> None:
    """CR Series and CR Image module attributes (PS3.3 C.8.1.1, C.8.1.2)."""
    spacing = _ds(study.spec.pixel_spacing)
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.KVP = "125"
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 320
    ds.DistanceSourceToDetector = "1800"


def generate_study(
    rng: np.random.Generator,
    spec: StudySpec,
    patient: PatientSpec | None = None,
    study_date: date | None = None,
) -> list[Dataset]:
    """One study as complete datasets with file meta (Explicit VR Little Endian).

    Each dataset is ready for ``ds.save_as(path, enforce_file_format=True)`` or a C-STORE.
    """
    study = _new_study(rng, spec, patient, study_date)
    grid = _grid(spec.rows, spec.columns, spec.pixel_spacing)
    n = spec.instances_per_series
    tex_a = _smooth_field(rng, grid.shape, max(spec.columns // 48, 2))
    tex_b = _smooth_field(rng, grid.shape, max(spec.columns // 48, 2))
    radius = spec.pixel_spacing * spec.columns / 2
    outside = (grid.x**2 + grid.y**2) > radius**2
    for_uid = study.uid("frame-of-reference")
    datasets = []
    for series in _series_list(study):
        for index in range(n):
            t = index / (n - 1) if n > 1 else 0.5
            texture = tex_a * math.cos(3 * math.pi * t) + tex_b * math.sin(3 * math.pi * t)
            ds = _instance_header(study, series, index + 1, study.uid("sop", series.number, index))
            z = -index * spec.slice_thickness
            if spec.modality == "CT":
                hu = _ct_hu(grid, t, study.protocol.contrast, texture)
                noise = series.kind.noise * rng.standard_normal(grid.shape, dtype=np.float32)
                _set_pixels(ds, _ct_stored(hu, noise, outside), "MONOCHROME2", 16)
                _set_plane(ds, study, z, for_uid)
                _set_ct_image(ds, study, series)
            elif spec.modality == "MR":
                signal = _mr_signal(grid, t, series.kind.param, texture)
                _set_pixels(ds, _mr_stored(signal, series.kind.noise, rng), "MONOCHROME2", 12)
                _set_plane(ds, study, z, for_uid)
                _set_mr_image(ds, series)
            else:
                shift = (float(rng.normal(0, 0.02)), float(rng.normal(0, 0.02)))
                _set_pixels(ds, _cr_pixels(spec.rows, spec.columns, rng, shift), "MONOCHROME1", 12)
                _set_cr_image(ds, study)
            datasets.append(ds)
    return datasets


def generate_demo(seed: int = 2026, studies: int = 6) -> Iterator[Dataset]:
    """A deterministic mix of CT, MR and CR studies; each patient has about two studies."""
    master = np.random.default_rng([seed, 0])
    names = master.permutation(len(_PATIENT_NAMES))
    first_id = int(master.integers(10_000_000, 90_000_000))
    specs = (CT_DEMO, MR_DEMO, CR_DEMO)
    patients: list[PatientSpec] = []
    for k in range((studies + 1) // 2):
        name, sex = _PATIENT_NAMES[int(names[k % len(names)])]
        birth = date(1940, 1, 1) + timedelta(days=int(master.integers(0, 65 * 365)))
        patients.append(PatientSpec(name, f"BN{first_id + k}", birth, sex))
    for k in range(studies):
        rng = np.random.default_rng([seed, k + 1])
        yield from generate_study(rng, specs[k % len(specs)], patients[k // 2])


def write_demo(out_dir: Path, seed: int = 2026, studies: int = 6) -> list[Path]:
    """Write the demo as ``out_dir/<PatientID>/<AccessionNumber>/<series>_<instance>.dcm``."""
    paths = []
    for ds in generate_demo(seed, studies):
        folder = out_dir / str(ds.PatientID) / str(ds.AccessionNumber)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(ds.SeriesNumber):03d}_{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def generate_bulk(
    seed: int,
    n_studies: int,
    instances_per_study: int,
    rows: int = 512,
    cols: int = 512,
) -> Iterator[Dataset]:
    """CT studies for benchmarks: one series per study, pixels from a precomputed buffer.

    A handful of phantom slices and one oversized noise field are computed once; each instance
    adds a shifted window of the noise to a slice, so pixel data differ between instances at
    the cost of one array addition.
    """
    thickness = next((th for th in (5.0, 2.5, 1.25) if th * instances_per_study <= 400), 0.625)
    # The precomputed slices have no contrast, so neither may the description.
    spec = StudySpec(
        "CT", 1, instances_per_study, rows, cols, thickness, description="CT NGỰC KHÔNG CẢN QUANG"
    )
    rng = np.random.default_rng([seed, 0])
    grid = _grid(rows, cols, spec.pixel_spacing)
    texture = _smooth_field(rng, grid.shape, max(cols // 48, 2))
    outside = (grid.x**2 + grid.y**2) > (spec.pixel_spacing * cols / 2) ** 2
    n_base = min(instances_per_study, 16)
    zero = np.zeros(grid.shape, dtype=np.float32)
    base = [
        _ct_stored(_ct_hu(grid, k / max(n_base - 1, 1), False, texture), zero, outside)
        for k in range(n_base)
    ]
    noise = np.rint(10 * rng.standard_normal((rows + 64, cols + 64))).astype(np.int16)
    first_id = int(rng.integers(10_000_000, 90_000_000))
    count = 0
    for s in range(n_studies):
        study_rng = np.random.default_rng([seed, s + 1])
        study = _new_study(study_rng, spec, random_patient(study_rng, f"BN{first_id + s}"), None)
        series = _series_list(study)[0]
        for_uid = study.uid("frame-of-reference")
        for index in range(instances_per_study):
            dy, dx = count % 61, (count // 61) % 64  # both inside the 64 extra rows/columns
            pixels = (
                base[index * n_base // instances_per_study] + noise[dy : dy + rows, dx : dx + cols]
            )
            np.copyto(pixels, np.int16(_CT_PADDING), where=outside)
            ds = _instance_header(study, series, index + 1, study.uid("sop", 1, index))
            _set_pixels(ds, pixels, "MONOCHROME2", 16)
            _set_plane(ds, study, -index * thickness, for_uid)
            _set_ct_image(ds, study, series)
            count += 1
            yield ds
