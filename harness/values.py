"""Reading values from rows that may come from JSON, a pandas table or an older run: None for missing."""
from __future__ import annotations

import math
from typing import Any

SAMPLE_DIGITS = 6  # significant digits kept per stored sample: far below timer noise, keeps files small


def as_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_flag(value: Any) -> bool:
    return as_text(value) is not None and str(value).strip().lower() in ("true", "1", "yes")


def groups_ms(samples: Any, scale: float) -> tuple[tuple[float, ...], ...]:
    """Per-process samples as stored (nested lists; a flat list is one process), scaled to ms."""
    from harness.metrics.statistics import as_groups

    if not isinstance(samples, (list, tuple)):
        return ()
    return tuple(tuple(float(v) * scale for v in group) for group in as_groups(samples))


def usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text not in ("<NA>", "nan") else None


def plain(value: Any) -> Any:
    """pandas' NA/NaN -> None so rows read from a table look like journal rows."""
    try:
        import pandas as pd

        if not isinstance(value, (list, tuple, dict)) and pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def round_sample(value: float) -> float:
    return float(f"{value:.{SAMPLE_DIGITS}g}")


def strict_json(value: Any) -> Any:
    """NaN/inf -> None, recursively, so files are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
