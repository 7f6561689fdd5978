"""Errors raised for bad input. Each names the file, entry or field at fault and what was expected."""

from __future__ import annotations

__all__ = ["CXRSSLError", "CXRReadError", "DatalistError", "CheckpointError", "NonFiniteLossError", "OverrideError",
           "SilentRankError", "DicomWebError"]


class CXRSSLError(Exception):
    """Base class of every error raised by monai_cxrssl for bad input or state."""


class CXRReadError(CXRSSLError, ValueError):
    """A radiograph could not be read: missing, truncated, corrupt or of an unsupported kind.

    Args:
        path: the file that failed.
        reason: what was wrong and what was expected.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read radiograph '{self.path}': {reason}")

    def __reduce__(self):  # picklable across DataLoader workers and thread pools
        return (type(self), (self.path, self.reason))


class DatalistError(CXRSSLError, ValueError):
    """A datalist (or the folder/CSV it is built from) is empty, malformed or points at missing files."""


class CheckpointError(CXRSSLError, ValueError):
    """A checkpoint is missing, incomplete, or does not match the network it is loaded into."""


class NonFiniteLossError(CXRSSLError, FloatingPointError):
    """The training loss became NaN or infinite."""


class OverrideError(CXRSSLError, ValueError):
    """A command-line override names no setting of the bundle, or has a value MONAI would rewrite."""


class SilentRankError(CXRSSLError, RuntimeError):
    """Another process of a multi-process run stopped responding; the message names its rank."""


class DicomWebError(CXRSSLError, RuntimeError):
    """A DICOMweb server could not be reached, refused the credentials or answered an error; the message names the
    server and the request (never the credentials)."""
