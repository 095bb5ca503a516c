"""The attribute table: which DICOM keyword lives at which level in which column.

The single place where DICOM keywords meet column names (STYLE.md). Query levels follow the
Patient Root and Study Root information models (PS3.4 C.6.1, C.6.2); the computed attributes
(``NumberOf…Related…``, ``ModalitiesInStudy``) are PS3.4 C.6.1.1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.orm import InstrumentedAttribute

from pacs.index.models import Instance, Patient, Series, Study


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown query level {text!r}") from None


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: Level
    vr: str
    column: InstrumentedAttribute[object] | None  # None: computed


ATTRIBUTES: dict[str, Attr] = {a.keyword: a for a in (
    Attr("PatientName", Level.PATIENT, "PN", Patient.patient_name),
    Attr("PatientID", Level.PATIENT, "LO", Patient.patient_id),
    Attr("IssuerOfPatientID", Level.PATIENT, "LO", Patient.issuer_of_patient_id),
    Attr("PatientBirthDate", Level.PATIENT, "DA", Patient.patient_birth_date),
    Attr("PatientSex", Level.PATIENT, "CS", Patient.patient_sex),
    Attr("NumberOfPatientRelatedStudies", Level.PATIENT, "IS", None),
    Attr("NumberOfPatientRelatedSeries", Level.PATIENT, "IS", None),
    Attr("NumberOfPatientRelatedInstances", Level.PATIENT, "IS", None),
    Attr("StudyInstanceUID", Level.STUDY, "UI", Study.study_uid),
    Attr("StudyDate", Level.STUDY, "DA", Study.study_date),
    Attr("StudyTime", Level.STUDY, "TM", Study.study_time),
    Attr("AccessionNumber", Level.STUDY, "SH", Study.accession_number),
    Attr("StudyID", Level.STUDY, "SH", Study.study_id),
    Attr("StudyDescription", Level.STUDY, "LO", Study.study_description),
    Attr("ReferringPhysicianName", Level.STUDY, "PN", Study.referring_physician_name),
    Attr("ModalitiesInStudy", Level.STUDY, "CS", None),
    Attr("NumberOfStudyRelatedSeries", Level.STUDY, "IS", Study.num_series),
    Attr("NumberOfStudyRelatedInstances", Level.STUDY, "IS", Study.num_instances),
    Attr("SeriesInstanceUID", Level.SERIES, "UI", Series.series_uid),
    Attr("Modality", Level.SERIES, "CS", Series.modality),
    Attr("SeriesNumber", Level.SERIES, "IS", Series.series_number),
    Attr("SeriesDescription", Level.SERIES, "LO", Series.series_description),
    Attr("SeriesDate", Level.SERIES, "DA", Series.series_date),
    Attr("SeriesTime", Level.SERIES, "TM", Series.series_time),
    Attr("BodyPartExamined", Level.SERIES, "CS", Series.body_part_examined),
    Attr("NumberOfSeriesRelatedInstances", Level.SERIES, "IS", Series.num_instances),
    Attr("SOPInstanceUID", Level.IMAGE, "UI", Instance.sop_instance_uid),
    Attr("SOPClassUID", Level.IMAGE, "UI", Instance.sop_class_uid),
    Attr("InstanceNumber", Level.IMAGE, "IS", Instance.instance_number),
    Attr("ContentDate", Level.IMAGE, "DA", Instance.content_date),
    Attr("ContentTime", Level.IMAGE, "TM", Instance.content_time),
    Attr("Rows", Level.IMAGE, "US", Instance.rows),
    Attr("Columns", Level.IMAGE, "US", Instance.columns),
    Attr("NumberOfFrames", Level.IMAGE, "IS", Instance.number_of_frames),
    Attr("BitsAllocated", Level.IMAGE, "US", Instance.bits_allocated),
    Attr("PhotometricInterpretation", Level.IMAGE, "CS", Instance.photometric_interpretation),
    Attr("AvailableTransferSyntaxUID", Level.IMAGE, "UI", Instance.transfer_syntax_uid),
)}

# PN keys match on a folded copy of the name (pacs.dicom.names.fold). A table of its own, not
# a field of Attr with a default: mypy reads a defaulted descriptor-typed field as `object`.
FOLDED: dict[str, InstrumentedAttribute[object]] = {
    "PatientName": Patient.patient_name_folded,
    "ReferringPhysicianName": Study.referring_physician_folded,
}

UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Keys returned at each level when the caller names none (QIDO-RS defaults, PS3.18 10.6.3.3)
DEFAULT_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "NumberOfPatientRelatedStudies"),
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
                   "NumberOfSeriesRelatedInstances", "StudyInstanceUID"),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                  "NumberOfFrames", "BitsAllocated", "StudyInstanceUID", "SeriesInstanceUID"),
}
