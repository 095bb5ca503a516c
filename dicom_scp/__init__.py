"""The DIMSE service: a thin pynetdicom adapter over the archive's services."""
