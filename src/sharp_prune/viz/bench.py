"""The data behind the accuracy-vs-retention picture, from a `sharp-prune bench` result (bench.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

SUMMARY_KEYS = ("layer", "method", "retention", "accuracy")


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read a bench result written by `sharp-prune bench` and check it has what the picture needs.

    Raises:
        InputError: the file is missing, not JSON, or has no `summary` rows / `baseline.accuracy`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"bench result not found: {path}; pass the bench.json that `sharp-prune bench` wrote.")
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not JSON ({err}); pass the bench.json that `sharp-prune bench` wrote.") from err
    return check_bench(result, str(path))


def check_bench(result: Any, source: str = "the bench result") -> dict[str, Any]:
    """`result` if it has non-empty `summary` rows (layer, method, retention, accuracy) and `baseline.accuracy`.

    Raises:
        InputError: saying what is missing.
    """
    if not isinstance(result, dict) or not isinstance(result.get("summary"), list) or not result["summary"]:
        raise InputError(f"{source} has no 'summary' rows: it is not a `sharp-prune bench` result.")
    baseline = result.get("baseline")
    if not isinstance(baseline, dict) or not isinstance(baseline.get("accuracy"), (int, float)):
        raise InputError(f"{source} has no baseline.accuracy: it is not a `sharp-prune bench` result.")
    accuracy_curves(result["summary"])  # checks every row
    return result


def accuracy_curves(summary: Sequence[dict[str, Any]]) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """{layer K: {method: [(retention, accuracy), ...] sorted by retention}} from bench summary rows."""
    curves: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for number, row in enumerate(summary):
        missing = [key for key in SUMMARY_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise InputError(f"bench summary row {number} lacks {', '.join(missing)}.")
        curves.setdefault(int(row["layer"]), {}).setdefault(str(row["method"]), []).append(
            (float(row["retention"]), float(row["accuracy"]))
        )
    for methods in curves.values():
        for points in methods.values():
            points.sort()
    return dict(sorted(curves.items()))
