"""Writes a run's results: JSON with every number, a Markdown report, a PNG plot, TREC run files.

Layout of `out_dir`:

- `results.json`: config, protocol sizes, per mode the mean / per-fold R@K of each direction, mR
  (mean and per fold), and each mode's delta to its exact reference;
- `report.md`: the table modes x (T2I R@1/5/10, I2T R@1/5/10, mR, reference mR, delta);
- `report.png`: one bar group per mode;
- `runs/<mode>.<direction>.fold<f>.trec`: `qid Q0 docid rank score tag`, in the order the metrics
  used (ties by id). trec_eval re-sorts ties by its own rule, so the `rank` column is the
  authoritative order;
- `qrels/<direction>.fold<f>.qrels`: `qid 0 docid 1`, to rescore runs with other tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocols import DIRECTIONS, EvalProtocol
from .runner import ModeResult

__all__ = ["ReportPaths", "format_table", "results_to_json", "write_report", "write_trec_run"]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class ReportPaths:
    """What `write_report` wrote."""

    json: Path
    markdown: Path
    plot: Path
    runs: list[Path]
    qrels: list[Path]


def _safe(name: str) -> str:
    return _SAFE.sub("_", name) or "mode"


def _by_mode(results: Sequence[ModeResult]) -> dict[str, ModeResult]:
    modes: dict[str, ModeResult] = {}
    for result in results:
        if result.mode in modes:
            raise ValueError(f"two results are called {result.mode!r}: give each mode a distinct name")
        modes[result.mode] = result
    return modes


def _comparison(result: ModeResult, modes: Mapping[str, ModeResult]) -> dict[str, Any] | None:
    ref = modes.get(result.reference or "")
    if ref is None or ref is result:
        return None
    delta: dict[str, Any] = {"reference": ref.mode}
    if result.mr is not None and ref.mr is not None:
        delta["mR"] = round(result.mr - ref.mr, 6)
    for direction in result.directions():
        if direction in ref.directions():
            mine, theirs = result.recall(direction), ref.recall(direction)
            delta[direction] = {f"R@{k}": round(mine[k] - theirs[k], 6) for k in result.ks if k in theirs}
    return delta


def results_to_json(
    results: Sequence[ModeResult],
    *,
    config: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
) -> dict[str, Any]:
    """The JSON document of `results.json` (also handy for regression checks)."""
    modes = _by_mode(results)
    return {
        "format": 1,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config": dict(config or {}),
        "protocol": protocol.summary() if protocol else None,
        "modes": {name: r.summary() for name, r in modes.items()},
        "comparisons": {name: c for name, r in modes.items() if (c := _comparison(r, modes)) is not None},
    }


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _rows(results: Sequence[ModeResult]) -> tuple[list[str], list[list[str]]]:
    modes = _by_mode(results)
    ks = sorted({k for r in results for k in r.ks})
    header = ["mode"]
    header += [f"T2I R@{k}" for k in ks] + [f"I2T R@{k}" for k in ks] + ["mR", "exact ref", "ref mR", "Δ mR"]
    rows = []
    for result in results:
        row = [result.mode]
        for direction in DIRECTIONS:
            values = result.recall(direction) if direction in result.directions() else {}
            row += [_fmt(values.get(k)) for k in ks]
        ref = modes.get(result.reference or "")
        has_ref = ref is not None and ref is not result
        ref_mr = ref.mr if has_ref and ref is not None else None
        delta = result.mr - ref_mr if result.mr is not None and ref_mr is not None else None
        row += [_fmt(result.mr), ref.mode if has_ref and ref is not None else "—", _fmt(ref_mr), _fmt(delta, True)]
        rows.append(row)
    return header, rows


def format_table(results: Sequence[ModeResult]) -> str:
    """A fixed-width table for the terminal: one row per mode, percent values."""
    header, rows = _rows(results)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _markdown(
    results: Sequence[ModeResult], document: Mapping[str, Any], protocol: EvalProtocol | None, plot_name: str
) -> str:
    first = results[0]
    header, rows = _rows(results)
    out = [
        f"# {first.benchmark} {first.split}: {first.protocol} protocol",
        "",
        "R@K is the hit rate (success@K) in percent; mR is the mean of the six. Score ties are "
        'ordered by id. "exact ref" is the in-memory brute-force reference the mode is compared with.',
        "",
        *_encoder_lines(document.get("config", {})),
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    fold_lines = [
        f"| {r.mode} | " + " | ".join(_fmt(r.fold_mr().get(f)) for f in first.folds()) + " |"
        for r in results
        if r.fold_mr()
    ]
    if len(first.folds()) > 1 and fold_lines:
        out += [
            "## mR per fold",
            "",
            "| mode | " + " | ".join(f"fold {f}" for f in first.folds()) + " |",
            "|---|" + "---:|" * len(first.folds()),
            *fold_lines,
            "",
        ]
    if protocol is not None:
        out += ["## Protocol", ""]
        out += [
            f"- {t['direction']} fold {t['fold']}: {t['n_queries']} queries, {t['n_docs']} texts of "
            f"{t['n_images']} images (`{t['corpus_id']}`)"
            for t in protocol.summary()["tasks"]
        ]
        out += [f"- note: {note}" for note in protocol.notes]
        out += [f"- images with none ({direction}): {count} (--allow-missing: kept in the protocol, never retrieved)"
                for direction, count in protocol.missing.items() if count]
        out.append("")
    out += ["## Configuration", "", "```json", json.dumps(document.get("config", {}), indent=2, sort_keys=True)]
    out += ["```", "", f"![results]({plot_name})", ""]
    return "\n".join(out)


def _encoder_lines(config: Mapping[str, Any]) -> list[str]:
    """`Encoder: <name> (<dimension>-d, <backend>)`, and the run id, when the config records them."""
    encoder = config.get("encoder")
    lines = []
    if isinstance(encoder, Mapping) and encoder.get("name"):
        size = f"{encoder['dimension']}-d, " if encoder.get("dimension") else ""
        lines.append(f"Encoder: {encoder['name']} ({size}{encoder.get('backend', '?')})")
    if config.get("run_id"):
        lines.append(f"Run: {config['run_id']}")
    return [f"{text}  " for text in lines] + ([""] if lines else [])  # two spaces: a markdown line break


def _plot(results: Sequence[ModeResult], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted({k for r in results for k in r.ks})
    series = [(d, k) for d in DIRECTIONS for k in ks] + [("mR", 0)]
    labels = [f"{d.upper()} R@{k}" for d, k in series[:-1]] + ["mR"]
    figure = Figure(figsize=(max(8.0, 1.8 * len(results) + 3.0), 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    for j, ((direction, k), label) in enumerate(zip(series, labels, strict=True)):
        heights = []
        for result in results:
            if direction == "mR":
                heights.append(result.mr or 0.0)
            elif direction in result.directions():
                heights.append(result.recall(direction).get(k, 0.0))
            else:
                heights.append(0.0)
        positions = [i + (j - (len(series) - 1) / 2) * width for i in range(len(results))]
        bars = axes.bar(positions, heights, width, label=label)
        if direction == "mR":
            axes.bar_label(bars, fmt="%.1f", fontsize="small")
    axes.set_xticks(range(len(results)))
    axes.set_xticklabels([r.mode for r in results], rotation=15)
    axes.set_ylim(0, 100)
    axes.set_ylabel("percent")
    first = results[0]
    axes.set_title(f"{first.benchmark} {first.split} — {first.protocol}")
    axes.legend(fontsize="small", ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    figure.savefig(path, format="png", bbox_inches="tight")


def write_trec_run(path: Path, run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> None:
    """`qid Q0 docid rank score tag` lines; rankings must already be in metric order."""
    with path.open("w", encoding="utf-8") as handle:
        for qid, ranking in run.items():
            for rank, (doc, score) in enumerate(ranking, start=1):
                handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} {_safe(tag)}\n")


def write_report(
    results: Sequence[ModeResult],
    out_dir: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
    write_runs: bool = True,
) -> ReportPaths:
    """Writes all report files for results of one protocol; returns their paths."""
    if not results:
        raise ValueError("no results to report")
    if len({(r.benchmark, r.split, r.protocol) for r in results}) != 1:
        raise ValueError("a report covers one benchmark split and one protocol")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = results_to_json(results, config=config, protocol=protocol)
    runs: list[Path] = []
    qrels: list[Path] = []
    if write_runs:
        (out / "runs").mkdir(exist_ok=True)
        (out / "qrels").mkdir(exist_ok=True)
        for result in results:
            for task in result.tasks:
                path = out / "runs" / f"{_safe(result.mode)}.{task.direction}.fold{task.fold}.trec"
                write_trec_run(path, task.run, result.mode)
                runs.append(path)
                qrel_path = out / "qrels" / f"{task.direction}.fold{task.fold}.qrels"
                if qrel_path not in qrels:
                    with qrel_path.open("w", encoding="utf-8") as handle:
                        for qid, rels in task.qrels.items():
                            handle.writelines(f"{qid} 0 {doc} {rel}\n" for doc, rel in rels.items())
                    qrels.append(qrel_path)
    document["files"] = {
        "runs": [str(p.relative_to(out)) for p in runs],
        "qrels": [str(p.relative_to(out)) for p in qrels],
    }
    json_path, md_path, png_path = out / "results.json", out / "report.md", out / "report.png"
    json_path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(_markdown(results, document, protocol, png_path.name), encoding="utf-8")
    _plot(results, png_path)
    return ReportPaths(json_path, md_path, png_path, runs, qrels)
