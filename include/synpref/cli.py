"""``synpref`` command line: every pipeline step runnable by hand, on the same storage layout as the DAGs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from synpref.settings import (
    AnnotateSettings,
    PrepareConfig,
    Stage1Config,
    Stage2Config,
    Stage2Source,
    from_flat,
    specs,
)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _require(path: str | None, what: str) -> None:
    """Arguments are checked before any work starts."""
    from synpref.io.readers import InputError
    from synpref.io.storage import as_path

    if path and not as_path(path).exists():
        raise InputError(f"{what} not found: {path}")


@command
def cmd_prepare(a: argparse.Namespace) -> int:
    from synpref.io.layout import PoolLayout
    from synpref.io.preprocess import prepare
    from synpref.io.readers import scan_inputs

    _require(a.benchmark, "--benchmark file")
    config = from_flat(PrepareConfig, vars(a))
    scans = [scan_inputs(uri) for uri in a.input]
    files = [f for s in scans for f in s.files]
    skipped = [x for s in scans for x in s.skipped]
    for x in skipped:
        print(f"skipped {x['path']}: {x['reason']}", file=sys.stderr)
    manifest = prepare(files, PoolLayout(a.out), a.benchmark, config, skipped)
    _print({"pool": a.out, **manifest.counts, "shards": len(manifest.shards), "skipped_files": len(skipped)})
    return 0


@command
def cmd_synth(a: argparse.Namespace) -> int:
    from synpref.io.storage import read_parquet, write_parquet
    from synpref.simulation.synthetic import generate_disjoint

    exclude = [read_parquet(p) for p in a.disjoint_from]
    pairs, truth = generate_disjoint(
        a.n, exclude, seed=a.seed, noise=a.noise, source=a.source, with_attributes=not a.no_attributes
    )
    write_parquet(pairs, a.out)
    write_parquet(truth, a.truth)
    _print({"pairs": a.out, "truth": a.truth, "n": pairs.num_rows, "noise": a.noise})
    return 0


def _read_rows(uris: list[str]) -> list[dict]:
    from synpref.io.readers import input_files, read_pairs

    rows = []
    for uri in uris:
        for f in input_files(uri):
            res = read_pairs(f)
            if res.quarantine:
                print(
                    f"warning: {len(res.quarantine)} invalid record(s) in {f} skipped: {res.quarantine[0]['reason']}",
                    file=sys.stderr,
                )
            if res.repaired:
                print(
                    f"warning: {len(res.repaired)} record(s) in {f} repaired: {res.repaired[0]['reason']}",
                    file=sys.stderr,
                )
            rows.extend(r.model_dump() for r in res.records)
    return rows


@command
def cmd_annotate(a: argparse.Namespace) -> int:
    from synpref.io.storage import as_path, read_parquet, write_json, write_parquet
    from synpref.llm.annotation import annotate_pairs, annotator_stats, status_counts
    from synpref.llm.client import load_annotators
    from synpref.simulation.evaluation import merged_accuracy, truth_agree

    _require(a.pairs, "--pairs")
    _require(a.gold, "--gold")
    _require(a.truth, "--truth")
    annotators = load_annotators(a.annotators)
    pairs, gold = _read_rows([a.pairs]), (_read_rows([a.gold]) if a.gold else [])
    out = as_path(a.out)
    settings = from_flat(AnnotateSettings, vars(a))
    merged, samples, usage = annotate_pairs(pairs, gold, annotators, a.cache or out / "llm_cache", settings)
    summary = {
        "pairs": len(pairs),
        "gold_examples_available": len(gold),
        "annotators": [x.model_dump() for x in annotators],
        "usage": usage,
        "counts": status_counts(merged),
        "merge_policy": a.merge_policy,
        "mean_agreement": sum(merged.column("agreement").to_pylist()) / max(1, merged.num_rows),
    }
    if a.truth:
        agree = truth_agree(pairs, read_parquet(a.truth))
        summary["annotator_stats"] = annotator_stats(samples, agree)
        summary["merged"] = merged_accuracy(merged, agree)
    else:
        summary["annotator_stats"] = annotator_stats(samples)
    write_parquet(samples, out / "samples.parquet")
    write_parquet(merged, out / "verdicts.parquet")
    write_json(summary, out / "summary.json")
    _print({k: v for k, v in summary.items() if k != "annotators"})
    return 0


@command
def cmd_simulate_annotators(a: argparse.Namespace) -> int:
    import logging
    import os

    from synpref.simulation.simulated import SIMULATION_BANNER, JudgeProfile, SimulatedJudgeServer, load_truth

    logging.basicConfig(level=logging.INFO)
    profiles = {name: JudgeProfile.parse(spec) for name, spec in (m.split("=", 1) for m in a.model)}
    server = SimulatedJudgeServer(
        load_truth(*a.truth), profiles, os.environ.get(a.api_key_env) if a.api_key_env else None, a.host, a.port
    )
    print(f"{SIMULATION_BANNER}\nserving {sorted(profiles)} at http://{a.host}:{a.port}/v1", flush=True)
    server.serve_forever()
    return 0


@command
def cmd_stage1(a: argparse.Namespace) -> int:
    from synpref.io.layout import StorageLayout
    from synpref.llm.client import load_annotators
    from synpref.pipeline import run_round

    annotators = load_annotators(a.annotators) if a.annotators else []
    cfg = from_flat(Stage1Config, vars(a))
    _require(a.inbox, "--inbox")
    _require(a.pool, "--pool")
    store = StorageLayout(a.root, a.pool)
    manifest = run_round(store, a.date, annotators, cfg, inbox=a.inbox, params=vars(a))
    _print({"round": a.date, **manifest["summary"], "report": manifest["report"]})
    return 0


@command
def cmd_simulate_humans(a: argparse.Namespace) -> int:
    from synpref.simulation.simulated import simulate_human_review

    counts = simulate_human_review(a.queue, a.truth, a.out, a.accuracy, a.seed)
    print(
        "SIMULATED human verifier (synpref.simulation.simulated) answered the review queue from the hidden truth",
        file=sys.stderr,
    )
    _print({"export": a.out, **counts})
    return 0


@command
def cmd_stage2(a: argparse.Namespace) -> int:
    from synpref.io.storage import read_parquet
    from synpref.llm.client import load_annotators
    from synpref.pipeline import run_stage2
    from synpref.reporting.report import write_stage2_report
    from synpref.simulation.evaluation import accuracy_report

    cfg = from_flat(Stage2Config, vars(a))
    annotators = load_annotators(a.annotators) if a.annotators else []
    _require(a.input, "--input")
    _require(a.benchmark, "--benchmark file")
    _require(a.truth, "--truth")
    manifest = run_stage2(
        a.root,
        a.out,
        a.input,
        annotators,
        a.round,
        cfg,
        a.benchmark,
        params={k: v for k, v in vars(a).items() if k != "func"},
    )
    report = {"out": a.out, "round": manifest["round"], **manifest["counts"], "report": manifest["report"]}
    if a.truth:
        report["label_accuracy_vs_truth"] = _with_coverage_warning(accuracy_report(a.out, read_parquet(a.truth)))
        report["report"] = write_stage2_report(a.out, read_parquet(a.truth))  # with the truth beside the estimates
    _print(report)
    reason = (manifest.get("frontier") or {}).get("reason")
    if reason:  # an empty curated set is published, with why and what the same evidence reaches at other targets
        print(f"synpref stage2: warning: {reason}", file=sys.stderr)
    return 0


@command
def cmd_downstream(a: argparse.Namespace) -> int:
    """The downstream check on a finished stage-2 output: RMs trained on its curated set and on its raw input,
    scored on RM benchmarks; writes ``downstream.json`` beside the output (the card shows it after an export)."""
    from synpref.stage2.context import Stage2Run
    from synpref.stage2.downstream import step_downstream

    _require(a.out, "--out")
    for uri in a.rm_benchmarks.split(","):
        _require(uri.strip(), "--rm-benchmarks file")
    cfg = Stage2Config(rm_benchmarks=a.rm_benchmarks, downstream_pairs=a.pairs, seed=a.seed)
    record = step_downstream(Stage2Run.at(a.root or a.out, a.out, "", cfg))
    _print(record.dump() if record else {})
    return 0


def _with_coverage_warning(report: dict) -> dict:
    cov = report.get("truth_coverage") or {}
    if cov.get("share") is not None and cov["share"] < 1:
        print(
            f"warning: the truth covers {cov['covered']} of {cov['pairs']} input pairs; "
            "accuracies are over the covered pairs only",
            file=sys.stderr,
        )
    return report


@command
def cmd_report(a: argparse.Namespace) -> int:
    import pyarrow as pa

    from synpref.io.storage import read_parquet
    from synpref.reporting.report import all_round_reports, stage2_report, write_root_report

    for t in a.truth:
        _require(t, "--truth")
    _require(a.root, "--root")
    _require(a.stage2, "--stage2")
    truth = pa.concat_tables([read_parquet(t) for t in a.truth]) if a.truth else None
    out = {"rounds": all_round_reports(a.root, truth)}
    if a.stage2:
        out["stage2"] = stage2_report(a.stage2, truth)
        _with_coverage_warning(out["stage2"].get("label_accuracy_vs_truth", {}))
    out["html"] = write_root_report(a.root, [a.stage2] if a.stage2 else [], truth, a.html)
    _print(out)
    return 0


_PY_TYPES = {"integer": int, "number": float, "string": str}


def add_settings(parser: argparse.ArgumentParser, model: type) -> None:
    """One flag per exposed setting of a config model: ``--k-max``, ``--rm-lr``, ... (see ``synpref.settings``)."""
    for spec in specs(model):
        help_text = spec.title + (f": {spec.description}" if spec.description else "")
        kw: dict = {"dest": spec.name, "default": spec.default, "help": help_text.replace("%", "%%")}
        if spec.kind == "boolean":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _PY_TYPES[spec.kind]
        if spec.enum:
            kw["choices"] = list(spec.enum)
        parser.add_argument("--" + spec.name.replace("_", "-"), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synpref", description="SynPref preference-data curation (Skywork-Reward-V2) — run steps by hand."
    )
    sp = p.add_subparsers(dest="command", required=True)
    for add in (
        _prepare_parser,
        _synth_parser,
        _annotate_parser,
        _stage1_parser,
        _stage2_parser,
        _downstream_parser,
        _report_parser,
        _simulate_humans_parser,
        _simulate_annotators_parser,
    ):
        add(sp)
    return p


def _prepare_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser("prepare", help="raw pairs → quarantine, dedup, decontamination → unverified pool shards")
    s.add_argument(
        "--input",
        action="append",
        required=True,
        help="file or directory URI (repeatable; also hf://datasets/...); jsonl/json/parquet/csv/arrow",
    )
    s.add_argument(
        "--out", required=True, help="pool directory URI, e.g. file:///data/root/pool or s3://bucket/root/pool"
    )
    s.add_argument(
        "--benchmark",
        default=None,
        help="benchmark prompts (.txt one per line, or JSONL with 'prompt') for 13-gram decontamination",
    )
    add_settings(s, PrepareConfig)


def _synth_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser("synth", help="generate synthetic objective preference pairs with a separate hidden-truth table")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", type=float, default=0.0, help="fraction of pairs with chosen/rejected flipped")
    s.add_argument("--source", default="synthetic")
    s.add_argument("--no-attributes", action="store_true", help="leave the 5 preference attributes empty")
    s.add_argument("--out", required=True, help="output Parquet URI")
    s.add_argument("--truth", required=True, help="hidden-truth Parquet URI (keep it out of the input directory)")
    s.add_argument(
        "--disjoint-from",
        action="append",
        default=[],
        help="pairs file the new set must share no pair with, in either orientation (repeatable)",
    )


def _annotate_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "annotate", help="preference-aware LLM annotation of pairs (few-shot gold examples, self-consistency, merge)"
    )
    s.add_argument("--pairs", required=True, help="pairs to judge (any format the readers take)")
    s.add_argument("--gold", default=None, help="human-verified gold pairs with the 5 attributes (few-shot examples)")
    s.add_argument(
        "--annotators",
        required=True,
        help="YAML/JSON list of annotators: name, base_url, model, api_key_env, samples, ...",
    )
    s.add_argument("--out", required=True, help="output directory: verdicts.parquet, samples.parquet, summary.json")
    s.add_argument("--cache", default=None, help="LLM response cache directory (default <out>/llm_cache)")
    s.add_argument("--truth", default=None, help="hidden truth (synthetic data) to report accuracies")
    add_settings(s, AnnotateSettings)


def _stage1_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "stage1", help="run one stage-1 curation round (intake → RMs → retrieval → annotation → silver/review queue)"
    )
    s.add_argument(
        "--root", required=True, help="storage root: pool under <root>/pool/, verifications under <root>/inbox/<date>/"
    )
    s.add_argument("--date", required=True, help="the round's date, YYYY-MM-DD")
    s.add_argument("--inbox", default=None, help="override the inbox directory (default <root>/inbox/<date>/)")
    s.add_argument("--pool", default=None, help="the unverified pool directory (default <root>/pool/)")
    s.add_argument("--annotators", default=None, help="YAML/JSON annotator list (see `synpref annotate --help`)")
    add_settings(s, Stage1Config)


def _stage2_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "stage2", help="stage 2: dual-RM consistency filtering, LLM re-annotation, recycling → curated dataset"
    )
    s.add_argument(
        "--root", required=True, help="storage root holding the stage-1 rounds (rounds/<date>/) and the LLM cache"
    )
    s.add_argument(
        "--input", required=True, help="raw pairs (file/dir, any reader format) or an existing pool directory"
    )
    s.add_argument(
        "--out",
        required=True,
        help="output directory: kept/ recycled/ dropped/ quarantined.parquet README.md manifest.json",
    )
    s.add_argument(
        "--annotators", default=None, help="YAML/JSON annotator list; without it no LLM re-annotation happens"
    )
    s.add_argument("--benchmark", default=None, help="benchmark prompts for decontamination")
    s.add_argument(
        "--truth", default=None, help="synthetic hidden truth: report label accuracy of input/kept/recycled"
    )
    add_settings(s, Stage2Source)
    add_settings(s, Stage2Config)


def _downstream_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "downstream",
        help="downstream check of a stage-2 output: does its curated set train a better RM than its raw input?",
    )
    s.add_argument("--out", required=True, help="a finished stage-2 output directory")
    s.add_argument("--root", default=None, help="its storage root (default: the output itself)")
    s.add_argument("--rm-benchmarks", required=True, help="RM benchmark files or URIs, comma-separated")
    s.add_argument("--pairs", type=int, default=2000, help="training pairs of each RM (default 2,000)")
    s.add_argument("--seed", type=int, default=0)


def _report_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "report",
        help="per-round stage-1 numbers and the stage-2 funnel as JSON, and an HTML report with figures "
        "(accuracies when a synthetic truth is given)",
    )
    s.add_argument("--root", required=True)
    s.add_argument("--stage2", default=None, help="a stage-2 output directory")
    s.add_argument("--truth", action="append", default=[], help="synthetic truth Parquet (repeatable)")
    s.add_argument("--html", default=None, help="folder of the HTML report (default <root>/report/)")


def _simulate_humans_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "simulate-humans", help="SIMULATED human verifier: answer a review queue from the truth → Label Studio export"
    )
    s.add_argument("--queue", required=True, help="rounds/<r>/review_queue/tasks.json")
    s.add_argument("--truth", action="append", required=True)
    s.add_argument("--out", required=True, help="export path, e.g. <root>/inbox/<next date>/labelstudio.json")
    s.add_argument("--accuracy", type=float, default=0.97)
    s.add_argument("--seed", type=int, default=0)


def _simulate_annotators_parser(sp: argparse._SubParsersAction) -> None:
    s = sp.add_parser(
        "simulate-annotators",
        help="serve SIMULATED OpenAI-compatible judges from a synthetic truth (offline demo/tests)",
    )
    s.add_argument("--truth", action="append", required=True, help="truth Parquet (repeatable)")
    s.add_argument(
        "--model", action="append", required=True, help="NAME=accuracy[,position_bias[,fault_rate]] (repeatable)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8900)
    s.add_argument("--api-key-env", default=None, help="require this env var's value as the bearer key")


def main(argv: list[str] | None = None) -> int:
    """Run one command. A usage or input problem is one line on stderr and exit 2 (never a traceback);
    an endpoint that kept failing is exit 1 (its answers so far are cached)."""
    from pydantic import ValidationError

    from synpref.io.preprocess import ConservationError
    from synpref.io.readers import InputError
    from synpref.io.storage import StorageError
    from synpref.llm.client import AnnotatorError, EndpointError, validation_message
    from synpref.models.device import DeviceError
    from synpref.models.reward_model import BackboneError
    from synpref.progress import configure_cli_logging

    args = build_parser().parse_args(argv)
    configure_cli_logging()
    try:
        return COMMANDS[args.command](args)
    except (InputError, AnnotatorError, FileNotFoundError, StorageError, DeviceError, BackboneError) as e:
        print(f"synpref {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"synpref {args.command}: error: {validation_message(e)}", file=sys.stderr)
        return 2
    except (EndpointError, ConservationError) as e:
        print(f"synpref {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, read-only storage: nothing was published (every write is atomic)
        print(f"synpref {args.command}: error: {e.strerror or e}; nothing was published", file=sys.stderr)
        return 1


def run() -> None:
    """Console entry point: ``main`` then a flushed ``os._exit``. pyarrow's native thread pools can abort
    the interpreter's teardown after the command finished ("terminate called without an active
    exception", about 1 run in 10 under CPU load), which turned finished commands into failures."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
