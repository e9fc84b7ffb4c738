"""Curation reports: per-round numbers of stage 1 and the funnel of stage 2 (JSON for the CLI), and the
HTML report with figures (``write_round_report``, ``write_stage2_report``, ``write_root_report``).

Reports read manifests, step records and per-shard summaries, never every pair: a 1M-pair stage-2 run
is read from its shards' ``_SUCCESS.json`` (histograms and category counts written by ``decide``).
A synthetic truth, when given, adds accuracies beside the estimates (the only part that reads pairs).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import jinja2
import pyarrow as pa
import pyarrow.compute as pc

from synpref.io.layout import DECISIONS, RoundLayout, Stage2Layout, StorageLayout, layout
from synpref.io.storage import PathLike, as_path, read_parquet, write_bytes
from synpref.models.reliability import wilson_interval
from synpref.records import (
    Frontier,
    JudgingBill,
    RoundManifest,
    RoundSteps,
    RoundSummary,
    ShardDecided,
    Stage2Manifest,
    Stage2Preview,
)
from synpref.reporting import figures as fig
from synpref.settings import HIST_BINS
from synpref.simulation.evaluation import accuracy_report, label_accuracy, truth_coverage
from synpref.stage1.steps import round_manifest


def fixed_slice(store: StorageLayout) -> set[str]:
    """The first completed round's gold-validation pairs: every later best RM is scored on the same pairs."""
    rounds = store.completed_rounds()
    return _validation_ids(store.round(rounds[0])) if rounds else set()


def _on(ev: list[dict], ids: set[str]) -> tuple[int, int]:
    """(correct, n) of the best RM's gold evaluation restricted to ``ids``."""
    hits = [e["correct"] for e in ev if e["pair_id"] in ids]
    return sum(hits), len(hits)


def round_report(root: PathLike | StorageLayout, rnd: str, truth: pa.Table | None = None) -> dict:
    store = layout(root)
    out = store.round(rnd)
    manifest = RoundManifest.read(out.manifest)
    ev = read_parquet(out.gold_eval).to_pylist()
    validation = _validation_ids(out)
    val = [e for e in ev if e["pair_id"] in validation]
    fixed_hits, fixed_n = _on(ev, fixed_slice(store))
    silver = read_parquet(out.silver)
    added = silver.filter(pc.and_(pc.equal(silver["provenance"], "llm"), pc.equal(silver["round"], rnd)))
    report = {
        "round": rnd,
        "previous_round": manifest.previous_round,
        "gold": manifest.summary.gold,
        "best_rm_gold_accuracy": manifest.summary.best_rm_gold_accuracy,
        "best_rm_gold_validation_accuracy": sum(e["correct"] for e in val) / len(val) if val else None,
        "best_rm_fixed_slice_accuracy": fixed_hits / fixed_n if fixed_n else None,
        "gold_rm_validation_accuracy": manifest.summary.gold_rm_validation_accuracy,
        "retrieved": manifest.summary.retrieved,
        "silver_added": added.num_rows,
        "silver_total": silver.num_rows,
        "review_queue": manifest.summary.review_queue,
        "cost_usd": manifest.summary.cost_usd,
    }
    if truth is not None:
        report["silver_added_accuracy_vs_truth"] = label_accuracy(added, truth)
        report["silver_added_truth_coverage"] = truth_coverage(added.column("pair_id").to_pylist(), truth)
    return report


def all_round_reports(root: PathLike | StorageLayout, truth: pa.Table | None = None) -> list[dict]:
    store = layout(root)
    return [round_report(store, r, truth) for r in store.completed_rounds()]


def stage2_report(out_dir: PathLike, truth: pa.Table | None = None) -> dict:
    manifest = Stage2Manifest.read(Stage2Layout(out_dir).manifest)
    report = {"round": manifest.round, **manifest.counts, "quality_estimates": manifest.quality_estimates.dump()}
    if truth is not None:
        report["label_accuracy_vs_truth"] = accuracy_report(out_dir, truth)
    return report


def fmt(x) -> str:
    """A report value for a table cell: 3 decimals for floats, n/a for missing."""
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


# --- HTML report ---------------------------------------------------------------------------------------


@dataclass
class Section:
    heading: str
    id: str
    note: str = ""
    figures: list[dict] = field(default_factory=list)  # {"name", "caption", "png"}
    table: dict | None = None  # {"header": [...], "rows": [[...]]}
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, caption: str, png: bytes) -> None:
        self.figures.append({"name": name, "caption": caption, "png": png})


@cache
def _template() -> jinja2.Template:
    text = resources.files("synpref").joinpath("templates", "report.html").read_text()
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(text)


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """One self-contained HTML page (figures inline as PNG data URIs)."""
    data = [
        {
            **s.__dict__,
            "figures": [{**f, "data": base64.b64encode(f["png"]).decode()} for f in s.figures],
        }
        for s in sections
    ]
    return _template().render(title=title, subtitle=subtitle, sections=data)


@dataclass
class Page:
    title: str
    subtitle: str
    sections: list[Section]

    def html(self) -> str:
        return render_html(self.title, self.subtitle, self.sections)


def write_page(directory: PathLike, page: Page) -> str:
    """``<dir>/index.html`` plus each figure as ``<dir>/<name>.png`` (the dataset card links those); → page URI."""
    d = as_path(directory)
    for s in page.sections:
        for f in s.figures:
            write_bytes(d / f"{f['name']}.png", f["png"])
    write_bytes(d / "index.html", page.html().encode())
    return str(d / "index.html")


def _wilson(accuracy: float | None, n: int) -> tuple[float | None, float | None]:
    if accuracy is None or not n:
        return None, None
    return wilson_interval(round(accuracy * n), n)


def round_history(store: StorageLayout, upto: str | None = None) -> list[dict]:
    """What the round figures need, per completed round up to ``upto``: manifest numbers, gold sizes and
    the best RM's correctness on a fixed held-out slice (the first round's gold-validation pairs)."""
    rounds = [r for r in store.completed_rounds() if upto is None or r <= upto]
    if upto is not None and upto not in rounds:
        rounds.append(upto)  # a preview before it is published (e.g. for its sign-off)
    fixed = fixed_slice(store) or _validation_ids(store.round(rounds[0]))
    history = []
    for rnd in rounds:
        out = store.round(rnd)
        ev = read_parquet(out.gold_eval, ["pair_id", "correct"]).to_pylist()
        history.append({"round": rnd, "manifest": _manifest_or_preview(store, rnd), "fixed": _on(ev, fixed)})
    return history


def _validation_ids(out: RoundLayout) -> set[str]:
    """The round's gold-validation pairs, as its intake split them (``gold_validation.parquet``)."""
    return set(read_parquet(out.gold_validation, ["pair_id"]).column("pair_id").to_pylist())


def _manifest_or_preview(store: StorageLayout, rnd: str) -> RoundManifest:
    out = store.round(rnd)
    return RoundManifest.read(out.manifest) if out.is_complete() else round_manifest(store, rnd)


def _round_sections(history: list[dict], truth: pa.Table | None, store: StorageLayout) -> list[Section]:
    """The rounds' report: reward models, data sizes, judges, spend (and the truth, when given)."""
    names = [h["round"] for h in history]
    steps: list[RoundSteps] = [h["manifest"].steps for h in history]
    summaries: list[RoundSummary] = [h["manifest"].summary for h in history]
    sections = [
        _rm_section(names, steps, summaries, history),
        _data_section(names, steps, summaries),
        _judges_section(names, steps),
        _spend_section(names, summaries),
    ]
    if any(st.rm_benchmarks and st.rm_benchmarks.benchmarks for st in steps):
        sections.insert(1, _benchmarks_section(names, steps))
    if truth is not None:
        sections.append(_truth_section(names, truth, store))
    return sections


def _benchmarks_section(names: list[str], steps: list[RoundSteps]) -> Section:
    """Both RMs of every round on the public RM benchmarks, and the last round's change against the one before."""
    section = Section(
        "Reward models on public RM benchmarks",
        "rm-benchmarks",
        "Accuracy (r(chosen) > r(rejected)) of the best RM and the gold RM on each configured benchmark, with 95% "
        "Wilson intervals; RewardBench's score where its subsets are named; the best RM's paired difference to the "
        "previous round's on the same pairs (95% bootstrap interval). A regression beyond the interval asks for a "
        "sign-off (``benchmark_gate``).",
    )
    benches = sorted({b for st in steps if st.rm_benchmarks for b in st.rm_benchmarks.benchmarks})
    series: dict[str, dict[str, list]] = {}
    for bench in benches:
        for rm in ("best_rm", "gold_rm"):
            cells = [
                getattr(st.rm_benchmarks.benchmarks[bench], rm)["overall"]
                if st.rm_benchmarks and bench in st.rm_benchmarks.benchmarks
                else None
                for st in steps
            ]
            series[f"{bench}, {rm.replace('_', ' ')}"] = {
                k: [c[f] if c else None for c in cells]
                for k, f in (("value", "accuracy"), ("low", "ci_low"), ("high", "ci_high"))
            }
    section.add(
        "rm_benchmarks",
        "RM accuracy on the public benchmarks over rounds (95% intervals).",
        fig.accuracy_over_rounds(names, series, "Reward models on public RM benchmarks"),
    )
    last = steps[-1].rm_benchmarks
    rows = []
    for bench, b in sorted((last.benchmarks if last else {}).items()):
        vs = b.vs_previous
        change = (
            f"{vs['difference']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}] vs {b.previous_round}" if vs else "—"
        )
        rb = b.best_rm.get("rewardbench")
        rows.append(
            [
                bench,
                b.pairs,
                fmt(b.best_rm["overall"]["accuracy"]),
                fmt(b.gold_rm["overall"]["accuracy"]),
                fmt(rb["score"]) if rb else "—",
                change + (" (regressed)" if b.regressed else ""),
            ]
        )
    section.table = {
        "header": ["benchmark", "pairs", "best RM", "gold RM", "RewardBench score (best RM)", "best RM change"],
        "rows": rows,
    }
    return section


def _rm_section(
    names: list[str], steps: list[RoundSteps], summaries: list[RoundSummary], history: list[dict]
) -> Section:
    rm = Section(
        "Reward models on gold",
        "reward-models",
        "Accuracy of the best RM on all gold (it never trains on gold) and of the gold RM on gold-validation, "
        "with 95% Wilson intervals. The gold set grows every round, so the fixed held-out slice (the first "
        "round's gold-validation pairs, scored by every later best RM) shows the trend on the same pairs.",
    )
    series: dict[str, dict[str, list]] = {
        "best RM, all gold": {"value": [], "low": [], "high": [], "color": "best"},
        "best RM, fixed held-out slice": {"value": [], "low": [], "high": [], "color": "fixed"},
        "gold RM, gold-validation": {"value": [], "low": [], "high": [], "color": "gold"},
    }
    for st, sm, h in zip(steps, summaries, history):
        gold_cal = st.evaluate.calibration.get("gold")
        points = {
            "best RM, all gold": (sm.best_rm_gold_accuracy, sm.gold),
            "best RM, fixed held-out slice": (h["fixed"][0] / h["fixed"][1] if h["fixed"][1] else None, h["fixed"][1]),
            "gold RM, gold-validation": (sm.gold_rm_validation_accuracy, gold_cal.n if gold_cal else 0),
        }
        for name, (value, n) in points.items():
            low, high = _wilson(value, n)
            series[name]["value"].append(value)
            series[name]["low"].append(low)
            series[name]["high"].append(high)
    rm.add(
        "rm_accuracy",
        "Best-RM and gold-RM accuracy on gold over rounds (95% intervals).",
        fig.accuracy_over_rounds(names, series, "Reward-model accuracy on gold"),
    )
    categories = sorted({c for st in steps for c in st.evaluate.per_category})
    per_cat = {c: [st.evaluate.per_category.get(c, {}).get("accuracy") for st in steps] for c in categories}
    if categories:
        rm.add(
            "rm_accuracy_by_category",
            "Best-RM accuracy on gold per task category.",
            fig.per_category(names, per_cat, "Best-RM accuracy per task category"),
        )
    rm.table = {
        "header": ["round", "gold", "best RM (all gold)", "best RM (fixed slice)", "gold RM (validation)", "warnings"],
        "rows": [
            [
                n,
                sm.gold,
                fmt(sm.best_rm_gold_accuracy),
                fmt(series["best RM, fixed held-out slice"]["value"][i]),
                fmt(sm.gold_rm_validation_accuracy),
                "; ".join(sm.warnings) or "—",
            ]
            for i, (n, sm) in enumerate(zip(names, summaries))
        ],
    }
    return rm


def _data_section(names: list[str], steps: list[RoundSteps], summaries: list[RoundSummary]) -> Section:
    data = Section(
        "Gold, silver and the review queue",
        "sizes",
        "Cumulative gold (human-verified), silver (training pairs of the best RM) and the pairs queued "
        "for the humans' next day, per round.",
    )
    sizes = {
        "gold": [sm.gold for sm in summaries],
        "silver": [sm.silver for sm in summaries],
        "review queue": [sm.review_queue for sm in summaries],
    }
    data.add(
        "sizes", "Gold / silver / review-queue sizes per round.", fig.sizes_over_rounds(names, sizes, "Data per round")
    )
    last = steps[-1].retrieve
    ks = last.k_distribution
    data.add(
        "retrieval_k",
        f"Adaptive retrieval in {names[-1]}: how many gold pairs asked for k neighbours "
        f"(k grows as the best RM's p on the gold pair falls); {last.retrieved} pool pairs pulled.",
        fig.bars(
            list(ks), list(ks.values()), f"k(p) of adaptive retrieval, {names[-1]}", "k (neighbours)", "gold pairs"
        ),
    )
    data.add(
        "retrieved",
        "Pool pairs pulled by adaptive retrieval per round.",
        fig.sizes_over_rounds(names, {"retrieved": [st.retrieve.retrieved for st in steps]}, "Pool pairs retrieved"),
    )
    return data


def _judges_section(names: list[str], steps: list[RoundSteps]) -> Section:
    judges = Section(
        "Judges",
        "judges",
        "Each annotator answers a blind probe of gold pairs every round (shown like any pair, in a seeded "
        "random order): accuracy with its 95% interval, share of abstentions, and position bias "
        "(how much more often it picks the first response than the second).",
    )
    now = steps[-1].merge.judges.annotators
    if now:
        jn = sorted(now)
        stats = {
            "accuracy": [now[n].accuracy for n in jn],
            "low": [now[n].ci_low for n in jn],
            "high": [now[n].ci_high for n in jn],
            "abstention": [now[n].abstained / max(1, now[n].pairs) for n in jn],
            "position_bias": [abs(now[n].position_bias or 0) for n in jn],
        }
        judges.add("judges", f"Judges on the gold probe, {names[-1]}.", fig.judges(jn, stats, f"Judges, {names[-1]}"))
        measured = [st.merge.judges.annotators for st in steps]
        fields = {"value": "accuracy", "low": "ci_low", "high": "ci_high"}
        drift = {
            n: {k: [getattr(m[n], f) if n in m else None for m in measured] for k, f in fields.items()} for n in jn
        }
        judges.add(
            "judges_over_rounds",
            "Judge accuracy on the gold probe over rounds (drift).",
            fig.accuracy_over_rounds(names, drift, "Judge accuracy over rounds"),
        )
    else:
        judges.note = "No annotators in these rounds."
    return judges


def _spend_section(names: list[str], summaries: list[RoundSummary]) -> Section:
    spend = Section(
        "Tokens and cost",
        "cost",
        "Tokens and cost of the rounds' annotations at the prices configured per annotator (cached "
        "answers count: the figures do not change on a re-run). With simulated judges the cost is simulated.",
    )
    spend.add(
        "tokens",
        "Tokens per round.",
        fig.sizes_over_rounds(names, {"tokens": [sm.tokens for sm in summaries]}, "Tokens per round", "tokens"),
    )
    costs = [sm.cost_usd for sm in summaries]
    spend.add(
        "cost",
        "Cost per round (USD).",
        fig.sizes_over_rounds(names, {"cost": costs}, "Cost per round", "USD")
        if any(costs)
        else fig.message(
            "Cost per round", "no cost: no annotator has prices (price_in_per_1k, price_out_per_1k in its connection)"
        ),
    )
    return spend


def _truth_section(names: list[str], truth: pa.Table, store: StorageLayout) -> Section:
    reports = [round_report(store, n, truth) for n in names]
    acc = {"value": [r.get("silver_added_accuracy_vs_truth") for r in reports]}
    acc["low"] = acc["high"] = acc["value"]
    t = Section(
        "Against the synthetic truth",
        "truth",
        "Label accuracy of the silver each round added, from the hidden truth.",
    )
    t.add(
        "silver_truth",
        "Label accuracy of the silver added per round (synthetic truth).",
        fig.accuracy_over_rounds(names, {"silver added": acc}, "Silver added: label accuracy (truth)"),
    )
    return t


def round_page(root: PathLike | StorageLayout, rnd: str, truth: pa.Table | None = None) -> Page:
    """The report of round ``rnd``: every completed round up to it."""
    store = layout(root)
    history = round_history(store, rnd)
    subtitle = f"stage-1 round {rnd} · {len(history)} round(s) · storage {store.root}"
    return Page(f"SynPref stage 1 — round {rnd}", subtitle, _round_sections(history, truth, store))


def write_round_report(root: PathLike | StorageLayout, rnd: str, truth: pa.Table | None = None) -> str:
    """``round_page`` written next to the round's manifest; → page URI."""
    return write_page(layout(root).round(rnd).report_dir, round_page(root, rnd, truth))


def stage2_summary(run: Stage2Layout) -> dict:
    """Per-shard decision summaries (``_SUCCESS.json``) added up: p histograms and categories by decision."""
    hist = {k: {d: [0] * HIST_BINS for d in DECISIONS} for k in ("p_best", "p_gold")}
    categories: dict[str, dict[str, int]] = {}
    for uri in run.pool().shard_uris():
        marker = run.shard(uri).success
        if not marker.exists():
            continue
        summary = ShardDecided.read(marker).summary
        for k in hist:
            for d, counts in getattr(summary, k).items():
                hist[k][d] = [a + b for a, b in zip(hist[k][d], counts)]
        for cat, by in summary.categories.items():
            for d, n in by.items():
                categories.setdefault(cat, {}).setdefault(d, 0)
                categories[cat][d] += n
    return {"hist": hist, "categories": categories}


def _stage2_sections(run: Stage2Layout, truth: pa.Table | None) -> list[Section]:
    """A stage-2 run's report: the funnel, the RM scores by decision, the quality estimates, the frontier and the
    judging bill."""
    m = Stage2Manifest.read(run.manifest) if run.is_complete() else Stage2Preview.read(run.estimates)  # preview
    sections = [_funnel_section(m), _scores_section(run, m.counts), _quality_section(run, m, truth)]
    sections += [_frontier_section(m.frontier)] if m.frontier else []
    return sections + ([_bill_section(m.judging)] if m.judging and m.judging.annotators else [])


def _funnel_section(m: Stage2Manifest | Stage2Preview) -> Section:
    c = m.counts
    funnel = Section(
        "Where every input pair went",
        "funnel",
        f"Source round {m.round}, decision rule `{m.config['decision_rule']}`. "
        "Counts conserve: input = quarantined + duplicates + contaminated + kept + recycled + dropped.",
    )
    stages = [("input", c["input"])] + [
        (k, c.get(k, 0)) for k in ("quarantined", "duplicates", "contaminated", *DECISIONS)
    ]
    funnel.add("funnel", "The stage-2 funnel.", fig.funnel(stages, "Stage 2: input → outcomes"))
    routed = c.get("routed_to_llm", 0)
    decided = sum(c[d] for d in DECISIONS)
    funnel.table = {
        "header": ["outcome", "pairs", "share of input"],
        "rows": [[k, f"{v:,}", f"{v / c['input']:.1%}" if c["input"] else "—"] for k, v in stages[1:]]
        + [["routed to LLM judges", f"{routed:,}", f"{routed / decided:.1%} of decided" if decided else "—"]],
    }
    return funnel


def _scores_section(run: Stage2Layout, c: dict) -> Section:
    routed, decided = c.get("routed_to_llm", 0), sum(c[d] for d in DECISIONS)
    summary = stage2_summary(run)
    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    scores = Section(
        "Reward-model scores by decision",
        "scores",
        "p = σ(r_chosen − r_rejected) of the best RM and of the gold RM for each decided pair, "
        f"coloured by the decision; {routed:,} of {decided:,} pairs ({routed / max(1, decided):.1%}) were "
        "routed to the LLM judges.",
    )
    for k, label in (("p_best", "best RM"), ("p_gold", "gold RM")):
        scores.add(
            f"hist_{k}",
            f"{label}: p of the stored label, by decision.",
            fig.histogram_by_decision(edges, summary["hist"][k], f"{label}: p by decision", f"p ({label})"),
        )
    cats = sorted(summary["categories"])
    if cats:
        scores.add(
            "categories",
            "Decisions per task category.",
            fig.stacked_categories(
                cats,
                {d: [summary["categories"][k].get(d, 0) for k in cats] for d in DECISIONS},
                "Decisions per task category",
            ),
        )
    return scores


def _quality_section(run: Stage2Layout, m: Stage2Manifest | Stage2Preview, truth: pa.Table | None) -> Section:
    quality = Section(
        "Quality estimates",
        "quality",
        "From blind canaries (held-out gold in both orientations, never exported): estimated precision "
        "of the kept and of the recycled pairs, and the retention of pairs whose label is right.",
    )
    q = m.quality_estimates
    if q.canaries:
        names = ["kept_precision", "retention", "recycled_precision"]
        intervals = [getattr(q, n) for n in names]
        truth_values = None
        if truth is not None:
            acc = accuracy_report(run, truth)
            truth_values = [acc.get("kept"), None, acc.get("recycled")]
            cov = acc.get("truth_coverage", {})
            if cov.get("share") is not None and cov["share"] < 1:
                quality.warnings.append(f"The truth covers {cov['covered']:,} of {cov['pairs']:,} input pairs.")
        quality.add(
            "quality",
            "Estimates with 95% intervals" + (", and the synthetic truth (×)." if truth_values else "."),
            fig.estimates(
                [n.replace("_", " ") for n in names], [i.dump() for i in intervals], truth_values, "Quality estimates"
            ),
        )
        quality.table = {
            "header": ["estimate", "value", "95% interval"],
            "rows": [
                [n.replace("_", " "), fmt(i.estimate), f"{fmt(i.ci_low)} – {fmt(i.ci_high)}"]
                for n, i in zip(names, intervals)
            ],
        }
    else:
        quality.note = "No canaries in this run (no held-out gold in the source round, or canaries = 0): no estimates."
        quality.add(
            "quality", "No estimates.", fig.message("Quality estimates", "no canaries in this run: no estimates")
        )
    return quality


def _frontier_section(reachable: Frontier) -> Section:
    """What the same evidence allows at other targets (``stage2.frontier``), with why when nothing was published."""
    section = Section(
        "Estimated precision–retention frontier",
        "frontier",
        f"From the calibrated posteriors of {reachable.pairs:,} decided pairs: how many a run at each target "
        "precision would keep and flip. The posteriors are the model's; the canaries above check them.",
    )
    if reachable.reason:
        section.warnings.append(reachable.reason)
    points = reachable.points
    section.add(
        "frontier",
        "Pairs kept and flipped per estimated precision; the dashed line is this run's target.",
        fig.frontier(
            [p.precision for p in points],
            [p.kept for p in points],
            [p.recycled for p in points],
            reachable.target,
            "Estimated precision–retention frontier",
        ),
    )
    section.table = {
        "header": ["estimated precision", "kept", "flipped"],
        "rows": [[f"{p.precision:.2f}", f"{p.kept:,}", f"{p.recycled:,}"] for p in points],
    }
    return section


def _bill_section(judging: JudgingBill) -> Section:
    """What the LLM judges cost this run: per annotator, per input pair and per 1,000 curated pairs."""
    per_1k = "n/a" if judging.cost_per_1k_curated_usd is None else f"${judging.cost_per_1k_curated_usd:,.4f}"
    bill = Section(
        "LLM judging bill",
        "bill",
        f"{judging.requests_per_input_pair:.2f} requests and {judging.tokens_per_input_pair:,.0f} tokens per input "
        f"pair; ${judging.cost_usd:,.4f} in all, {per_1k} per 1,000 curated pairs (kept + recycled). Cost uses "
        "each annotator's prices (zero when none is set; batch mode at the batch price); cached answers count as "
        "if asked."
        + (
            " Judges in sequence: " + ", ".join(f"{k} {v:,}" for k, v in judging.settled.items()) + " pairs."
            if judging.settled
            else ""
        ),
    )
    bill.table = {
        "header": [
            "annotator",
            "verdicts",
            "mode",
            "requests",
            "samples",
            "prompt tokens",
            "cached prompt tokens",
            "shared prefix",
            "completion tokens",
            "cost (USD)",
            "stopped",
        ],
        "rows": [
            [
                name,
                b.verdicts,
                b.mode,
                f"{b.requests:,}",
                "—" if b.samples is None else f"{b.samples:,}",
                f"{b.prompt_tokens:,}",
                f"{b.cached_prompt_tokens:,}",
                "—" if b.shared_prefix_share is None else f"{b.shared_prefix_share:.0%}",
                f"{b.completion_tokens:,}",
                f"{b.cost_usd:,.4f}",
                ", ".join(f"{k} {v:,}" for k, v in b.stopped.items()),
            ]
            for name, b in judging.annotators.items()
        ],
    }
    return bill


def stage2_page(out_dir: PathLike | Stage2Layout, truth: pa.Table | None = None) -> Page:
    run = out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)
    return Page(f"SynPref stage 2 — run {run.name}", f"output {run.dir}", _stage2_sections(run, truth))


def write_stage2_report(out_dir: PathLike | Stage2Layout, truth: pa.Table | None = None) -> str:
    """``stage2_page`` written next to the run's manifest; → page URI."""
    run = out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)
    return write_page(run.report_dir, stage2_page(run, truth))


def write_root_report(
    root: PathLike | StorageLayout,
    stage2: list[PathLike] = (),
    truth: pa.Table | None = None,
    out: PathLike | None = None,
) -> str:
    """One page for a storage root: every round, and the given stage-2 runs; → page URI."""
    store = layout(root)
    history = round_history(store)
    sections = _round_sections(history, truth, store) if history else []
    for s in stage2:
        run = Stage2Layout(s)
        for section in _stage2_sections(run, truth):
            section.heading = f"Stage 2 ({run.name}): {section.heading}"
            section.id = f"{run.name}-{section.id}"
            for f in section.figures:
                f["name"] = f"{run.name}_{f['name']}"
            sections.append(section)
    subtitle = f"storage {store.root} · {len(history)} round(s) · {len(stage2)} stage-2 run(s)"
    return write_page(out or store.report_dir, Page("SynPref curation report", subtitle, sections))


# --- what a sign-off shows -------------------------------------------------------------------------------


def _table(rows: list[tuple[str, object]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {fmt(v) if not isinstance(v, str) else v} |" for k, v in rows)


def round_sign_off(store: StorageLayout, rnd: str, report_uri: str, required: str | None = None) -> str:
    """Markdown for the "publish this round's silver?" approval: the round's numbers and its report (and why it
    is required, when a regression requires it)."""
    s = _manifest_or_preview(store, rnd).summary
    rows = [
        ("gold (human-verified, cumulative)", s.gold),
        ("silver after this round", s.silver),
        ("best RM accuracy on gold", s.best_rm_gold_accuracy),
        ("gold RM accuracy on gold-validation", s.gold_rm_validation_accuracy),
        ("pool pairs retrieved and judged", s.retrieved),
        ("review queue for tomorrow", s.review_queue),
        ("LLM cost (USD)", s.cost_usd),
        ("warnings", "; ".join(s.warnings) or "none"),
    ]
    why = f"**Sign-off required: {required}.**\n\n" if required else ""
    return (
        f"### Publish the silver of round {rnd}?\n\n{why}{_table(rows)}\n\nReport: `{report_uri}` (also under "
        "Browse → Curation, and this run's *Curation report* tab).\n\n**Approve** publishes the round (its manifest "
        "and the Asset events stage 2 listens to). **Reject** leaves it unpublished: the next round reads the one "
        "before."
    )


def stage2_sign_off(run: Stage2Layout, report_uri: str) -> str:
    """Markdown for the "export this curated dataset?" approval: the funnel, the estimates and the report."""
    m = Stage2Preview.read(run.estimates)
    c, q = m.counts, m.quality_estimates
    rows = [(k, f"{c.get(k, 0):,}") for k in ("input", *DECISIONS, "quarantined", "duplicates", "contaminated")]
    for name in ("kept_precision", "retention", "recycled_precision"):
        e = getattr(q, name)
        if q.canaries and e is not None:
            rows.append(
                (f"estimated {name.replace('_', ' ')}", f"{fmt(e.estimate)} [{fmt(e.ci_low)}, {fmt(e.ci_high)}]")
            )
    return (
        f"### Export the curated dataset of run {run.name}?\n\n{_table(rows)}\n\nReport: `{report_uri}`.\n\n"
        "**Approve** writes the dataset card and the manifest (the dataset is published). **Reject** leaves it "
        "unexported."
    )
