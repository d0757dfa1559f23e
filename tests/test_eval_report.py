"""Report files (JSON, Markdown, PNG, TREC runs and qrels), the terminal table, and the CLI end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rsrt.search.datasets import Benchmark, BenchmarkImage
from rsrt.search.evaluation import evaluate, format_table, loo_protocol, write_report
from rsrt.search.evaluation.__main__ import main
from rsrt.search.evaluation.exact import ExactBM25Ranker
from rsrt.search.evaluation.runner import ModeResult

TREC_LINE = re.compile(r"^(\S+) Q0 (\S+) (\d+) (-?\d+\.\d{6}) (\S+)$")

CAPTIONS = {
    "harbour_1": ["ships in a harbour", "boats at the port", "a port with many ships", "cargo ships docked"],
    "forest_2": ["a dense green forest", "many green trees", "a forest of tall trees", "trees and a path"],
    "court_3": ["two tennis courts", "tennis courts by a road", "courts for tennis", "a road near courts"],
}


def _bench() -> Benchmark:
    return Benchmark("mini", "test", [BenchmarkImage(i, f"{i}.tif", c) for i, c in CAPTIONS.items()])


@pytest.fixture(scope="module")
def results() -> list[ModeResult]:
    protocol = loo_protocol(_bench(), folds=4)
    exact = evaluate(protocol, ExactBM25Ranker(), mode="exact-bm25")
    # A second mode compared with the first: the same ranker under another name, plus a weaker one.
    same = evaluate(protocol, ExactBM25Ranker(), mode="engine-bm25", reference="exact-bm25")
    weak = evaluate(protocol, ExactBM25Ranker(k1=0.0, b=0.0), mode="engine-idf", reference="exact-bm25")
    return [exact, same, weak]


def test_write_report(results: list[ModeResult], tmp_path: Path) -> None:
    protocol = loo_protocol(_bench(), folds=4)
    paths = write_report(results, tmp_path / "out", config={"k1": 1.2}, protocol=protocol)

    document = json.loads(paths.json.read_text())
    assert document["config"] == {"k1": 1.2}
    assert document["protocol"]["tasks"][0] == {
        "direction": "t2i",
        "fold": 0,
        "corpus_id": "mini-test-loo-f0",
        "n_queries": 3,
        "n_docs": 9,
        "n_images": 3,
    }
    mode = document["modes"]["exact-bm25"]
    assert set(mode["directions"]) == {"t2i", "i2t"}
    assert set(mode["directions"]["t2i"]["per_fold"]) == {"0", "1", "2", "3"}
    assert set(mode["directions"]["i2t"]["mean"]) == {"R@1", "R@5", "R@10"}
    assert mode["mR"] == pytest.approx(results[0].mr)
    assert len(mode["mR_per_fold"]) == 4
    assert document["comparisons"]["engine-bm25"]["mR"] == 0.0
    assert document["comparisons"]["engine-idf"]["reference"] == "exact-bm25"
    assert "exact-bm25" not in document["comparisons"]

    assert paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths.markdown.read_text()
    assert (
        "| mode | T2I R@1 | T2I R@5 | T2I R@10 | I2T R@1 | I2T R@5 | I2T R@10 | mR | exact ref | ref mR | Δ mR |"
        in markdown
    )
    assert "| engine-bm25 |" in markdown and "+0.00 |" in markdown
    assert "## mR per fold" in markdown and "report.png" in markdown

    assert len(paths.runs) == 3 * 2 * 4
    run_file = tmp_path / "out" / "runs" / "engine-idf.i2t.fold2.trec"
    assert run_file in paths.runs
    lines = run_file.read_text().splitlines()
    assert lines and all(TREC_LINE.match(line) for line in lines)
    by_query: dict[str, list[int]] = {}
    for line in lines:
        qid, _, doc, rank, _, tag = line.split()
        by_query.setdefault(qid, []).append(int(rank))
        assert tag == "engine-idf" and doc.split("#")[0] in CAPTIONS and not doc.endswith("#2")
    assert set(by_query) == {f"{i}#2" for i in CAPTIONS}
    assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in by_query.values())
    qrels = (tmp_path / "out" / "qrels" / "t2i.fold0.qrels").read_text().splitlines()
    assert qrels == ["harbour_1#0 0 harbour_1 1", "forest_2#0 0 forest_2 1", "court_3#0 0 court_3 1"]


def test_format_table(results: list[ModeResult]) -> None:
    table = format_table(results).splitlines()
    assert table[0].split() == [
        "mode",
        "T2I",
        "R@1",
        "T2I",
        "R@5",
        "T2I",
        "R@10",
        "I2T",
        "R@1",
        "I2T",
        "R@5",
        "I2T",
        "R@10",
        "mR",
        "exact",
        "ref",
        "ref",
        "mR",
        "Δ",
        "mR",
    ]
    assert len(table) == 2 + 3
    assert table[2].startswith("exact-bm25") and table[2].split()[-3:] == ["—", "—", "—"]
    assert table[3].split()[-3:] == ["exact-bm25", f"{results[0].mr:.2f}", "+0.00"]


def test_report_rejects_mixed_protocols(results: list[ModeResult], tmp_path: Path) -> None:
    other = evaluate(loo_protocol(_bench(), folds=2), ExactBM25Ranker(), mode="two-folds")
    other.protocol = "standard"
    with pytest.raises(ValueError, match="one protocol"):
        write_report([results[0], other], tmp_path)
    with pytest.raises(ValueError, match="distinct name"):
        write_report([results[0], results[0]], tmp_path)


def test_cli_run_and_regress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data" / "rsitmd"
    data.mkdir(parents=True)
    lines = [(f"{image}.tif", caption) for image, captions in CAPTIONS.items() for caption in [*captions, captions[0]]]
    (data / "test_caps.txt").write_text("".join(f"{c}\n" for _, c in lines))
    (data / "test_filename.txt").write_text("".join(f"{f}\n" for f, _ in lines))
    out = tmp_path / "report"
    code = main(
        [
            "run",
            "--benchmark",
            "rsitmd",
            "--data-dir",
            str(tmp_path / "data"),
            "--mode",
            "exact-bm25",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "exact-bm25" in capsys.readouterr().out
    document = json.loads((out / "results.json").read_text())
    measured = document["modes"]["exact-bm25"]["mR"]
    assert document["config"]["protocol"] == "loo" and 0.0 < measured <= 100.0

    spec = {
        "format": 1,
        "name": "mini",
        "benchmark": "rsitmd",
        "split": "test",
        "protocol": "loo",
        "conditions": [
            {
                "name": "exact-bm25",
                "engine": "exact",
                "mode": "lexical",
                "command": "python -m ...",
                "expected": {"mR": measured},
                "tolerance": 0.01,
            },
            {
                "name": "opensearch-bm25",
                "engine": "opensearch",
                "mode": "lexical",
                "command": "rsrt eval ...",
                "expected": {"mR": measured},
                "tolerance": 0.5,
                "reference": "exact-bm25",
            },
        ],
    }
    spec_path = tmp_path / "mini.json"
    spec_path.write_text(json.dumps(spec))
    assert main(["regress", str(spec_path), "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "SKIP opensearch-bm25" in printed and "OK   exact-bm25" in printed
    spec["conditions"][0]["expected"] = {"mR": measured - 5.0}
    spec_path.write_text(json.dumps(spec))
    assert main(["regress", str(spec_path), "--data-dir", str(tmp_path / "data")]) == 1
    assert "FAIL exact-bm25: mR" in capsys.readouterr().out


def test_cli_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--benchmark", "ucm", "--data-dir", str(tmp_path), "--mode", "exact-bm25"]) == 2
    assert "dataset.json" in capsys.readouterr().err
