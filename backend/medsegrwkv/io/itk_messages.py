"""ITK's messages go to the project's log, not straight to the user's terminal.

ITK prints warnings such as "unexpected scales in sform" (every original ACDC file) or "Non
uniform sampling or missing slices detected" on stderr, outside any sentence of ours. They are
logged instead (logger `medsegrwkv.itk`, level INFO: shown in the worker's log, hidden on the
command line); what matters to the user is checked and said by the readers themselves (e.g. the
DICOM reader's uneven slice gaps warning).
"""

from __future__ import annotations

import logging
import re

import SimpleITK as sitk

log = logging.getLogger("medsegrwkv.itk")
_SOURCE = re.compile(r"^\w+ \(0x[0-9a-f]+\): ")  # "NiftiImageIO (0x55ce...): " before the message


def itk_text(text: str) -> str:
    """The message of an ITK text block, without its file/line header and object address."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("WARNING: In ",
                                                                                                  "ERROR: In "))]
    return _SOURCE.sub("", " ".join(lines))


class _ItkToLogging(sitk.LoggerBase):
    def DisplayText(self, text: str) -> None:
        log.debug("ITK: %s", itk_text(text))

    def DisplayErrorText(self, text: str) -> None:  # errors also raise, and become our own sentence
        log.info("ITK error: %s", itk_text(text))

    def DisplayWarningText(self, text: str) -> None:
        log.info("ITK warning: %s", itk_text(text))

    def DisplayGenericOutputText(self, text: str) -> None:
        log.debug("ITK: %s", itk_text(text))

    def DisplayDebugText(self, text: str) -> None:
        log.debug("ITK debug: %s", itk_text(text))


_LOGGER = _ItkToLogging()  # ITK keeps a pointer to it: it must live as long as the process


def route_itk_messages() -> None:
    """Make the logger above ITK's global output (idempotent)."""
    _LOGGER.SetAsGlobalITKLogger()
