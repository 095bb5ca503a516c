"""Tests for the seeded synthetic study generator (pacs.demo)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs.demo import (
    SOP_CLASSES,
    PatientSpec,
    StudySpec,
    generate_bulk,
    generate_demo,
    generate_study,
    write_demo,
)

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@pytest.fixture(scope="module")
def demo() -> list[Dataset]:
    """The default demo, generated once for the module (tests must not modify it)."""
    return list(generate_demo())


def _fingerprint(datasets: list[Dataset]) -> list[tuple[str, str, str, str]]:
    return [
        (
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            hashlib.sha256(ds.PixelData).hexdigest(),
        )
        for ds in datasets
    ]


def _one_per_modality(datasets: list[Dataset]) -> dict[str, Dataset]:
    found: dict[str, Dataset] = {}
    for ds in datasets:
        found.setdefault(str(ds.Modality), ds)
    return found


def test_demo_mixes_modalities_and_patients(demo: list[Dataset]) -> None:
    modalities = Counter(str(ds.Modality) for ds in demo)
    assert set(modalities) == {"CT", "MR", "CR"}
    assert modalities["CR"] == 2  # two single-image CR studies
    assert len({str(ds.StudyInstanceUID) for ds in demo}) == 6
    assert len({str(ds.PatientID) for ds in demo}) == 3
    study_dates = {str(ds.StudyDate) for ds in demo}
    assert len(study_dates) > 1
    assert all("20240101" <= d <= "20251231" for d in study_dates)


def test_same_seed_gives_identical_uids_and_pixels() -> None:
    first = _fingerprint(list(generate_demo(seed=7, studies=3)))
    second = _fingerprint(list(generate_demo(seed=7, studies=3)))
    assert first == second


def test_different_seeds_differ() -> None:
    a = list(generate_demo(seed=7, studies=3))
    b = list(generate_demo(seed=8, studies=3))
    assert {str(ds.SOPInstanceUID) for ds in a}.isdisjoint(str(ds.SOPInstanceUID) for ds in b)
    assert a[0].PixelData != b[0].PixelData


def test_generate_study_is_deterministic_for_a_generator_state() -> None:
    spec = StudySpec("MR", series_count=2, instances_per_series=3, rows=64, columns=64)
    a = generate_study(np.random.default_rng(42), spec)
    b = generate_study(np.random.default_rng(42), spec)
    assert _fingerprint(a) == _fingerprint(b)


def test_round_trip_keeps_utf8_names(demo: list[Dataset], tmp_path: Path) -> None:
    for modality, ds in _one_per_modality(demo).items():
        path = tmp_path / f"{modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        assert str(ds.PatientName).encode("utf-8") in raw
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert back.file_meta.MediaStorageSOPClassUID == SOP_CLASSES[modality]
        assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.ImplementationClassUID
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == str(ds.PatientName)
        assert str(back.ReferringPhysicianName) == str(ds.ReferringPhysicianName)
        assert back.StudyDescription == ds.StudyDescription
        assert back.PixelData == ds.PixelData


def test_names_are_vietnamese_pn(demo: list[Dataset]) -> None:
    for ds in demo:
        name = str(ds.PatientName)
        assert not name.isascii()
        assert ds.PatientName.family_name and ds.PatientName.given_name
        assert not str(ds.ReferringPhysicianName).isascii()
        assert re.fullmatch(r"BN[0-9]+", str(ds.PatientID))
        assert ds.PatientSex in ("M", "F")


@pytest.mark.parametrize(
    ("modality", "shape", "dtype", "photometric", "bits_stored"),
    [
        ("CT", (256, 256), np.int16, "MONOCHROME2", 16),
        ("MR", (256, 256), np.uint16, "MONOCHROME2", 12),
        ("CR", (512, 512), np.uint16, "MONOCHROME1", 12),
    ],
)
def test_pixels_decode(
    demo: list[Dataset],
    modality: str,
    shape: tuple[int, int],
    dtype: type[np.generic],
    photometric: str,
    bits_stored: int,
) -> None:
    ds = _one_per_modality(demo)[modality]
    arr = ds.pixel_array
    assert arr.shape == shape
    assert arr.dtype == dtype
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits_stored, bits_stored - 1)
    assert ds.SamplesPerPixel == 1
    assert ds.PixelRepresentation == (1 if dtype is np.int16 else 0)
    assert int(arr.max()) < 2**bits_stored
    assert arr.std() > 10  # a phantom, not a flat image


def test_ct_values_and_geometry(demo: list[Dataset]) -> None:
    ct = [ds for ds in demo if ds.Modality == "CT"]
    first_series = [ds for ds in ct if ds.SeriesInstanceUID == ct[0].SeriesInstanceUID]
    assert len(first_series) == 20
    assert (float(ct[0].RescaleIntercept), float(ct[0].RescaleSlope)) == (-1024.0, 1.0)
    hu = ct[0].pixel_array.astype(np.float64) - 1024
    assert hu.min() < -2000  # padding outside the reconstruction circle
    assert np.percentile(hu, 99) > 200  # bone
    spacing = [float(v) for v in ct[0].PixelSpacing]
    thickness = float(ct[0].SliceThickness)
    for i, ds in enumerate(first_series):
        assert ds.InstanceNumber == i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        assert x == pytest.approx(-(ds.Columns - 1) / 2 * spacing[1], abs=1e-3)
        assert y == pytest.approx(-(ds.Rows - 1) / 2 * spacing[0], abs=1e-3)
        assert z == pytest.approx(-i * thickness)
        assert float(ds.SliceLocation) == pytest.approx(z)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.FrameOfReferenceUID == ct[0].FrameOfReferenceUID


def test_slices_vary_across_a_series(demo: list[Dataset]) -> None:
    mr = [ds for ds in demo if ds.Modality == "MR"][:16]
    assert len({hashlib.sha256(ds.PixelData).digest() for ds in mr}) == 16
    assert abs(float(mr[0].pixel_array.mean()) - float(mr[8].pixel_array.mean())) > 5


def test_uids_are_valid_and_unique(demo: list[Dataset]) -> None:
    sop = [str(ds.SOPInstanceUID) for ds in demo]
    assert len(set(sop)) == len(sop)
    for ds in demo:
        uids = [ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID]
        if ds.Modality == "CR":  # the CR IOD has no Frame of Reference module
            assert "FrameOfReferenceUID" not in ds
        else:
            uids.append(ds.FrameOfReferenceUID)
        for uid in uids:
            assert len(uid) <= 64
            assert UID_RE.match(uid), uid
    series_per_study: dict[str, set[str]] = {}
    for ds in demo:
        series_per_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SeriesInstanceUID))
    all_series = [s for group in series_per_study.values() for s in group]
    assert len(all_series) == len(set(all_series))
    assert not {str(ds.StudyInstanceUID) for ds in demo} & set(all_series)


def test_contrast_protocols_label_their_series() -> None:
    spec = StudySpec("MR", series_count=3, instances_per_series=1, rows=32, columns=32)
    seen = set()
    for seed in range(8):
        datasets = generate_study(np.random.default_rng(seed), spec)
        contrast = "CÓ TIÊM THUỐC" in datasets[0].StudyDescription
        seen.add(contrast)
        enhanced = [ds.SeriesNumber for ds in datasets if "ContrastBolusAgent" in ds]
        assert enhanced == ([3] if contrast else [])
        assert datasets[-1].SeriesDescription.endswith("+C") == contrast
    assert seen == {True, False}


def test_generate_study_uses_given_patient_and_date() -> None:
    patient = PatientSpec("Đặng^Thu Hà", "BN20260001", date(1980, 5, 17), "F")
    spec = StudySpec("CT", series_count=1, instances_per_series=2, rows=64, columns=64)
    datasets = generate_study(np.random.default_rng(1), spec, patient, date(2025, 3, 1))
    assert len(datasets) == 2
    for ds in datasets:
        assert str(ds.PatientName) == "Đặng^Thu Hà"
        assert ds.PatientID == "BN20260001"
        assert ds.PatientBirthDate == "19800517"
        assert ds.StudyDate == "20250301"
        assert ds.PatientAge == "044Y"
        assert ds.pixel_array.shape == (64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modality": "US"},
        {"modality": "CT", "series_count": 0},
        {"modality": "CT", "instances_per_series": 0},
        {"modality": "CT", "rows": 8},
    ],
)
def test_study_spec_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        StudySpec(**kwargs)  # type: ignore[arg-type]


def test_write_demo(tmp_path: Path) -> None:
    paths = write_demo(tmp_path, seed=3, studies=3)
    assert len(paths) == sum(1 for _ in generate_demo(seed=3, studies=3))
    assert len(set(paths)) == len(paths)
    for path in paths[:: max(len(paths) // 5, 1)]:
        assert path.is_file() and path.is_relative_to(tmp_path)
        ds = pydicom.dcmread(path)
        assert path.parent.name == ds.AccessionNumber
        assert path.parent.parent.name == ds.PatientID


def test_generate_bulk_counts_and_uids() -> None:
    datasets = list(generate_bulk(seed=5, n_studies=3, instances_per_study=7, rows=64, cols=64))
    assert len(datasets) == 21
    sop = [str(ds.SOPInstanceUID) for ds in datasets]
    assert len(set(sop)) == 21
    studies = [str(ds.StudyInstanceUID) for ds in datasets]
    assert len(set(studies)) == 3
    for k in range(3):
        assert len(set(studies[k * 7 : (k + 1) * 7])) == 1
        assert len({str(ds.PatientID) for ds in datasets[k * 7 : (k + 1) * 7]}) == 1
    assert len({hashlib.sha256(ds.PixelData).digest() for ds in datasets}) == 21
    assert all(ds.SOPClassUID == SOP_CLASSES["CT"] for ds in datasets)
    assert datasets[0].pixel_array.shape == (64, 64)
    again = list(generate_bulk(seed=5, n_studies=3, instances_per_study=7, rows=64, cols=64))
    assert _fingerprint(again) == _fingerprint(datasets)


def test_generate_bulk_goes_on_past_4000_instances() -> None:
    # the noise window moved past the end of its buffer at the 3965th instance (make
    # bench-memory generates 10,000)
    count = 0
    for ds in generate_bulk(seed=3, n_studies=45, instances_per_study=100, rows=16, cols=16):
        assert len(ds.PixelData) == 16 * 16 * 2
        count += 1
    assert count == 4500


def test_generate_bulk_default_size_is_lazy() -> None:
    bulk = generate_bulk(seed=1, n_studies=10, instances_per_study=200)
    first = next(bulk)
    assert first.pixel_array.shape == (512, 512)
    assert sum(1 for _ in bulk) == 1999
