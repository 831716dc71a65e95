"""Typed cell values (JSON numbers, XLSX dates, ...) turned into the text stored for a pair."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

# Floats above this are not exact integers any more; keep their repr.
_EXACT_FLOAT_LIMIT = 2**53


class NestedValue(ValueError):
    """An object or array where text was expected."""


def to_text(value: object) -> str:
    """``None`` -> "", ``3.0`` -> "3", ``True`` -> "true", dates in ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dt.datetime):
        return _datetime_text(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, dict | list | tuple):
        raise NestedValue("an object" if isinstance(value, dict) else "an array")
    return str(value)


def _float_text(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < _EXACT_FLOAT_LIMIT:
        return str(int(value))
    return repr(value)


def _decimal_text(value: Decimal) -> str:
    if value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f") if value.is_finite() else str(value)


def _datetime_text(value: dt.datetime) -> str:
    if value.time() == dt.time(0) and value.tzinfo is None:
        return value.date().isoformat()  # Excel dates are datetimes at midnight
    return value.isoformat()
