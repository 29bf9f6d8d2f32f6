"""Number formatting shared by ``report.html`` and the comparison exports: shared decimals of a value
and its CI, estimates as text, p-values, durations and times. Pure functions, no HTML.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pandas as pd


def decimals(value: float, low: float, high: float) -> int | None:
    """Decimals that show ~3 significant digits of the value and at least one of the CI width.

    None means "use scientific notation" (very large or very small magnitudes).
    """
    finite = [abs(x) for x in (value, low, high) if math.isfinite(x)]
    if not finite:
        return 3
    top = max(finite)
    if top >= 1e6 or 0 < top < 1e-4:
        return None
    decimals = 3 - 1 - math.floor(math.log10(top)) if top > 0 else 3
    if math.isfinite(low) and math.isfinite(high) and high > low:
        decimals = max(decimals, -math.floor(math.log10(high - low)))
    return min(max(decimals, 0), 6)


def format_number(x: float, decimals: int | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = float(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    text = f"{x:.3g}" if decimals is None else f"{x:.{decimals}f}"
    return text.replace("-", "−")


def precise(x: float) -> str:
    """Six significant digits, for tooltips."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return format_number(x, 0)
    return f"{x:.6g}".replace("-", "−")


def format_estimate(value: float, low: float, high: float) -> tuple[str, str]:
    """("0.912", "[0.905, 0.918]") with shared decimals; the CI part is "" when there is none."""
    d = decimals(value, low, high)
    main = format_number(value, d)
    if (pd.isna(low) and pd.isna(high)) or pd.isna(value):
        return main, ""
    return main, f"[{format_number(low, d)}, {format_number(high, d)}]"


def format_seconds(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(s):
        return str(seconds)
    if s < 60:
        return f"{s:.3g} s" if s < 10 else f"{s:.1f} s"
    minutes, rest = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def format_time(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    suffix = f" {parsed.tzname()}" if parsed.tzinfo else ""
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + suffix


def finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def int_or(value: Any, default: str = "?") -> str:
    x = finite(value)
    return str(int(x)) if x is not None else default


def to_float(value: Any) -> float:
    x = finite(value)
    if x is not None:
        return x
    try:
        return float(value)  # keeps ±inf
    except (TypeError, ValueError):
        return math.nan


def fixed(value: Any, decimals: int = 3) -> str:
    return format_number(to_float(value), decimals)


def sig(value: Any) -> str:
    """About three significant digits (variances, scores on any scale)."""
    x = to_float(value)
    return format_number(x, decimals(x, math.nan, math.nan))


def format_p(value: Any) -> str:
    p = to_float(value)
    if math.isnan(p):
        return "—"
    return format_number(p, None if 0 < p < 0.001 else 3)
