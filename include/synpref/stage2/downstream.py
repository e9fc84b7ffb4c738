"""Stage 2, downstream check: is the curated set better training data than the raw input? (the paper's claim)

The same budget of pairs (``downstream_pairs``) is drawn, seeded, from the curated set (kept pairs with their
labels, recycled pairs flipped) and from the raw input (every pair the run decided, stored labels); each trains
a fresh reward model — the packaged encoder frozen with a Bradley-Terry head, what a CPU worker can afford; 20%
of each sample selects its checkpoint — and both are scored on every RM benchmark. The dataset card says "an RM
trained on this set: X [interval]; on the raw input: Y [interval]", and the paired difference on the same
benchmark pairs.
"""

from __future__ import annotations

from synpref.io.layout import DECISIONS, Stage2Layout
from synpref.io.storage import list_files, read_parquet
from synpref.models.reward_model import RewardModel, train_reward_model
from synpref.models.rm_benchmarks import load_benchmark, paired_difference, summarize
from synpref.records import DownstreamRecord
from synpref.seeding import seeded_sample
from synpref.settings import RMConfig
from synpref.stage2.context import Stage2Run
from synpref.stage2.recycle import recycled

SELECT_SHARE = 0.2


def training_sets(run: Stage2Layout, n: int) -> dict[str, list[dict]]:
    """``n`` pairs (at most) of the curated set and of the raw input, as the run's pool holds them (pair rows)."""
    decided: dict[str, str] = {}
    for d in DECISIONS:
        for part in list_files(run.split_dir(d), (".parquet",)):
            decided |= dict.fromkeys(read_parquet(part, ["pair_id"]).column("pair_id").to_pylist(), d)
    raw = [r for uri in run.pool().shard_uris() for r in read_parquet(uri).to_pylist() if r["pair_id"] in decided]
    curated = [
        r if decided[r["pair_id"]] == "kept" else recycled(r) for r in raw if decided[r["pair_id"]] != "dropped"
    ]
    budget = min(n, len(curated), len(raw))
    return {
        name: seeded_sample(rows, budget, "downstream", name) for name, rows in (("curated", curated), ("raw", raw))
    }


def step_downstream(ctx: Stage2Run) -> DownstreamRecord | None:
    """Reads the run's decided parts and pool and the ``rm_benchmarks`` files; writes ``downstream_rm`` (curated,
    raw) and then ``downstream``. Off (``downstream_pairs`` 0 or no benchmark): None, and a record an earlier
    run left is removed."""
    run, cfg = ctx.run, ctx.cfg
    if not cfg.downstream_pairs or not cfg.benchmark_uris:
        if run.downstream.exists():
            run.downstream.unlink()
        return None
    sets = training_sets(run, cfg.downstream_pairs)
    rm_cfg = RMConfig(mode="frozen", seed=cfg.seed)
    rms = {}
    cut = len(sets["curated"]) - max(1, int(len(sets["curated"]) * SELECT_SHARE))  # both sets are as large
    for name, rows in sets.items():
        train_reward_model(rows[:cut], rows[cut:], rm_cfg, run.downstream_rm(name))
        rms[name] = RewardModel(run.downstream_rm(name))
    try:
        benchmarks = {}
        for uri in cfg.benchmark_uris:
            bench = load_benchmark(uri)
            right = {name: rm.reward_diff(bench.rows) > 0 for name, rm in rms.items()}
            subsets = [r["subset"] for r in bench.rows]
            benchmarks[bench.name] = {
                **{name: summarize(subsets, r)["overall"] for name, r in right.items()},
                "difference": paired_difference(right["raw"], right["curated"], seed=cfg.seed),
            }
    finally:
        for rm in rms.values():
            rm.close()
    record = DownstreamRecord(pairs=cut, rm_mode=rm_cfg.mode, benchmarks=benchmarks)
    record.write(run.downstream)
    return record


def downstream_lines(record: DownstreamRecord | None) -> str:
    """The dataset card's lines of the downstream check."""
    if record is None:
        return "Not run (`downstream_pairs` 0, or no `rm_benchmarks`)."

    def acc(a: dict) -> str:
        return f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"

    lines = []
    for name, b in sorted(record.benchmarks.items()):
        d = b["difference"]
        lines.append(
            f"- **{name}** ({b['curated']['pairs']:,} pairs): an RM trained on {record.pairs:,} pairs of this set: "
            f"{acc(b['curated'])}; on {record.pairs:,} pairs of the raw input: {acc(b['raw'])} (difference "
            f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])"
        )
    return "\n".join(lines) + f"\n\nBoth RMs: `{record.rm_mode}` mode, the same seed, training and selection split."
