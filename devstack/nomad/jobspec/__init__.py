"""Job specs as Nomad sees them: decoding, canonical defaults, validation, change detection."""

from __future__ import annotations

from .compare import STATUS_FIELDS, group_destructively_changed, group_spec, spec_changed
from .decode import JOB_TYPES, DecodeError, canonicalize, decode_register_body
from .validate import ValidationError, validate

__all__ = [
    "JOB_TYPES",
    "STATUS_FIELDS",
    "DecodeError",
    "ValidationError",
    "canonicalize",
    "decode_register_body",
    "group_destructively_changed",
    "group_spec",
    "spec_changed",
    "validate",
]
