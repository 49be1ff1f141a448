"""Compatibility: the NIfTI reader lives in adapters/volumes/nifti.py (adapters know nothing of the
tasks that use them)."""

from adapters.volumes.nifti import (HU_MAX, HU_MIN, SPACING_MAX_MM, SPACING_MIN_MM, DecodeCache, Volume,  # noqa: F401
                                    VolumeError, decode)
