"""`python -m rsrt.search.evaluation`: run the exact reference and check regression files.

The OpenSearch modes are run through the `rsrt` command once wired; this entry point needs no
cluster, so the reference numbers can be reproduced anywhere the data and the model are.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..datasets import load_benchmark
from ..errors import RsrtError
from .exact import DEFAULT_MODEL, EXACT_MODES, make_exact_ranker
from .protocols import EvalProtocol, loo_protocol, read_json_file, standard_protocol
from .regression import available_regressions, check_condition, load_regressions
from .report import format_table, write_report
from .runner import ModeResult, evaluate


def _protocol(args: argparse.Namespace) -> EvalProtocol:
    bench = load_benchmark(args.benchmark, args.split, args.data_dir)
    if args.protocol == "loo":
        return loo_protocol(bench, args.folds)
    return standard_protocol(
        bench,
        variants=read_json_file(args.variants),
        image_queries=read_json_file(args.image_queries),
        allow_missing=args.allow_missing,
    )


def run_exact(protocol: EvalProtocol, modes: Sequence[str], backend: str = "torch") -> list[ModeResult]:
    """Scores `protocol` with each exact mode (the dense model is loaded once, on `backend`)."""
    results = []
    for mode in modes:
        ranker = make_exact_ranker(mode, backend=backend)
        config = {"engine": "exact", "encoder": DEFAULT_MODEL} if mode == "exact-dense" else {"engine": "exact"}
        if mode == "exact-bm25":
            config.update({"k1": 1.2, "b": 0.75, "analyzer": "english approximation, Porter"})
        results.append(evaluate(protocol, ranker, mode=mode, config=config))
    return results


def _cmd_run(args: argparse.Namespace) -> int:
    protocol = _protocol(args)
    modes = args.mode or list(EXACT_MODES)
    results = run_exact(protocol, modes, args.encoder_backend)
    out = Path(args.out or f"runs/{args.benchmark}-{args.split}-{args.protocol}")
    config = {
        "benchmark": args.benchmark,
        "split": args.split,
        "protocol": args.protocol,
        "folds": args.folds if args.protocol == "loo" else None,
        "modes": modes,
        "command": " ".join(["python -m rsrt.search.evaluation", *sys.argv[1:]]),
    }
    paths = write_report(results, out, config=config, protocol=protocol, write_runs=not args.no_runs)
    print(format_table(results))
    print(f"\nwrote {paths.json}, {paths.markdown}, {paths.plot} and {len(paths.runs)} run files")
    return 0


def _cmd_regress(args: argparse.Namespace) -> int:
    spec = load_regressions(args.name)
    chosen = args.condition or list(spec.conditions)
    unknown = [c for c in chosen if c not in spec.conditions]
    if unknown:
        raise RsrtError(f"{spec.name} has no condition {', '.join(unknown)} (has {', '.join(spec.conditions)})")
    runnable = [c for c in chosen if spec.conditions[c].engine == "exact"]
    for name in chosen:
        if name not in runnable:
            print(f"SKIP {name}: engine {spec.conditions[name].engine}; run: {spec.conditions[name].command}")
    if not runnable:
        return 0
    bench = load_benchmark(spec.benchmark, spec.split, args.data_dir)
    if spec.protocol != "loo":
        raise RsrtError(f"{spec.name}: only loo regressions run here (protocol {spec.protocol})")
    results = run_exact(loo_protocol(bench), runnable, args.encoder_backend)
    print(format_table(results))
    failed = 0
    for result in results:
        failures = check_condition(spec.conditions[result.mode], result)
        failed += bool(failures)
        print(("FAIL " + "; ".join(failures)) if failures else f"OK   {result.mode}: mR {result.mr:.2f}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    from ..encoder import BACKENDS

    # The environment is read here, at the edge, as the default: the encoder takes the backend as an argument.
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--encoder-backend", choices=BACKENDS, default=os.environ.get("RSRT_ENCODER_BACKEND") or
                         "torch", help="how the exact-dense encoder runs [env RSRT_ENCODER_BACKEND; default torch]")
    parser = argparse.ArgumentParser(prog="python -m rsrt.search.evaluation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[backend],
                         help="score a benchmark protocol with the exact reference and write a report")
    run.add_argument("--benchmark", required=True)
    run.add_argument("--split", default="test")
    run.add_argument("--protocol", choices=("loo", "standard"), default="loo")
    run.add_argument("--mode", action="append", choices=EXACT_MODES, help="repeatable; default: all")
    run.add_argument("--folds", type=int, default=5)
    run.add_argument("--data-dir")
    run.add_argument("--out", help="report folder (default runs/<benchmark>-<split>-<protocol>)")
    run.add_argument("--variants", help="standard T2I: JSON {image_id: [variant text or fields, ...]}")
    run.add_argument("--image-queries", help="standard I2T: JSON {image_id: query text or [texts]}")
    run.add_argument("--allow-missing", action="store_true")
    run.add_argument("--no-runs", action="store_true", help="skip the TREC run files")
    run.set_defaults(func=_cmd_run)
    regress = sub.add_parser("regress", parents=[backend],
                             help="rerun a regression file's exact conditions and compare")
    regress.add_argument("name", help=f"one of: {', '.join(available_regressions())}")
    regress.add_argument("--condition", action="append")
    regress.add_argument("--data-dir")
    regress.set_defaults(func=_cmd_regress)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RsrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)


if __name__ == "__main__":
    raise SystemExit(main())
