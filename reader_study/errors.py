"""The reader study's user-facing errors, which the CLI prints as one line instead of a traceback."""

from __future__ import annotations

from reader_study.blinding import BlindingError
from reader_study.create import CreateError
from reader_study.criteria import CriteriaError
from reader_study.store import StoreError
from reader_study.study import StudyError

ERRORS: tuple[type[Exception], ...] = (BlindingError, CreateError, CriteriaError, StoreError, StudyError)
