"""The package's one conversion of results to JSON-ready values (attributes, provenance)."""

from __future__ import annotations

from typing import Any

import numpy as np


def jsonable(obj: Any, nonfinite_as_null: bool = False) -> Any:
    """``obj`` with numpy scalars and arrays as Python values, tuples as lists and mapping keys
    as strings, recursively; non-finite Python floats as None if ``nonfinite_as_null``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite_as_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite_as_null) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if nonfinite_as_null and isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
