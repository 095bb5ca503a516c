"""DICOM knowledge of the archive (pydicom): UIDs, headers, names, file meta."""
