"""The HTTP adapter (FastAPI): DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) and the viewer."""
