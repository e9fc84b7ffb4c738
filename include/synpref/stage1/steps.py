"""Stage 1: one human-in-the-loop curation round (paper §3.2, Figure 3, left).

A round is named by its date. It reads the newest completed round before it (or the seed,
round 0) and writes only under ``<root>/rounds/<round>/``, its manifest last. Each ``step_*``
function is one Airflow task (the DAG maps the per-shard/per-annotator ones) and one piece of
``pipeline.run_round`` (the CLI). Steps record their counts in ``steps/<step>.json`` (typed:
``records``); ``step_publish`` gathers them into the manifest.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from synpref.io.layout import MANIFEST, SEED_ROUND, RoundLayout, StorageLayout, layout
from synpref.io.readers import InputError
from synpref.io.storage import (
    PathLike,
    as_path,
    list_files,
    read_json,
    read_parquet,
    remove_stale,
    write_bytes,
    write_json,
    write_jsonl,
    write_parquet,
)
from synpref.llm.annotation import (
    annotator_stats,
    examples_table,
    few_shot_examples,
    judge,
    merge_samples,
    probe_judge,
    read_examples,
    status_counts,
    task_budget,
    with_samples,
)
from synpref.llm.attributes import ATTRIBUTE_STATUS_SCHEMA, generate_attributes
from synpref.llm.client import AnnotatorConfig, Budget
from synpref.models.device import resolve_device
from synpref.models.embedding import embed_rows, embedding_dim, embedding_text, nearest_examples, text_sha
from synpref.models.reliability import (
    calibrate,
    counted_samples,
    joint_weights,
    judge_advice,
    judge_reliability,
    judge_warnings,
    label_confidence,
    rm_warnings,
    sigmoid,
)
from synpref.models.reward_model import RewardModel, evaluate, train_reward_model
from synpref.models.rm_benchmarks import load_benchmark, paired_difference, summarize
from synpref.progress import log, shard_position
from synpref.records import (
    EvaluateRecord,
    IntakeRecord,
    MergeRecord,
    Record,
    RetrieveRecord,
    RMBenchmarksRecord,
    RoundManifest,
    TrainRecord,
)
from synpref.schema import ATTRIBUTE_FIELDS, PAIR_SCHEMA, has_attributes
from synpref.seeding import seeded_int, seeded_sample
from synpref.settings import Stage1Config
from synpref.stage1 import gold as gold_mod
from synpref.stage1.adaptive_retrieval import (
    RECALL_TARGET,
    IndexCache,
    RetrievalConfig,
    adaptive_retrieve,
    k_for_p,
    random_retrieve,
    uncertainty_retrieve,
)
from synpref.stage1.silver import QUEUE_SCHEMA, merge_into_silver

INTAKE_SUMMARY = ("inbox_verifications", "inbox_quarantined", "inbox_conflicts", "inbox_unknown_pairs")
STEPS = ("intake", "train_best_rm", "train_gold_rm", "evaluate", "retrieve", "merge")  # recorded before publishing


def _rows(uri) -> list[dict]:
    return read_parquet(uri).to_pylist() if as_path(uri).exists() else []


def _read_any(directory, stem: str) -> list[dict]:
    """``<dir>/<stem>.parquet`` or ``.jsonl`` via the readers (seed data may come in any format)."""
    from synpref.io.readers import read_pairs

    for ext in (".parquet", ".jsonl", ".json", ".csv"):
        p = as_path(directory) / f"{stem}{ext}"
        if p.exists():
            res = read_pairs(p, source=f"seed-{stem}")
            if res.quarantine:
                raise ValueError(f"seed file {p} has invalid records: {res.quarantine[0]['reason']}")
            if res.repaired:
                log.warning("seed file %s: %d record(s) repaired: %s", p, len(res.repaired), res.repaired[0]["reason"])
            return [r.model_dump() for r in res.records]
    return []


def _seed_silver(store: StorageLayout, cfg: Stage1Config, gold_ids: set[str]) -> tuple[list[dict], str]:
    """The best RM's first training set: ``seed/silver`` when given, else a seeded sample of the unverified pool."""
    given = _read_any(store.seed, "silver")
    if given:
        return [{**r, "provenance": "seed", "round": SEED_ROUND} for r in given], "seed/silver"
    pool = [
        r for shard in store.pool.shards() for r in read_parquet(shard).to_pylist() if r["pair_id"] not in gold_ids
    ]
    sample = seeded_sample(
        pool, min(cfg.seed_silver, len(pool) // 2), "seed-silver", cfg.seed
    )  # half the pool stays to be retrieved
    return [{**r, "round": SEED_ROUND} for r in sample], f"unverified pool sample ({len(sample)} of {len(pool)})"


def _require_inputs(store: StorageLayout, rnd: str, gold: int, quarantine: list[dict]) -> None:
    """A round needs a prepared pool and some gold; otherwise say in one line what to provide (when every human
    verification was rejected: how many, why, and where the intake quarantine is)."""
    if not store.pool.is_complete():
        raise InputError(f"no unverified pool at {store.pool.dir}: run `synpref prepare --out {store.pool.dir}` first")
    if gold == 0 and quarantine:
        reasons = Counter(q["reason"].split(":")[0][:80] for q in quarantine)
        why = "; ".join(f"{n} × {r}" for r, n in reasons.most_common(3))
        raise InputError(
            f"round {rnd} has no gold: all {len(quarantine)} human verifications in the inbox were rejected ({why}); "
            f"the rows and reasons are in {store.round(rnd).table('intake_quarantine')}"
        )
    if gold == 0:
        raise InputError(
            f"round {rnd} has no gold: put human verifications in {store.inbox(rnd)} "
            f"or seed gold at {store.seed}/gold.parquet"
        )


STEP_RECORDS: dict[str, type[Record]] = {
    "intake": IntakeRecord,
    "train_best_rm": TrainRecord,
    "train_gold_rm": TrainRecord,
    "evaluate": EvaluateRecord,
    "retrieve": RetrieveRecord,
    "merge": MergeRecord,
    "rm_benchmarks": RMBenchmarksRecord,
}


def _step_record(out: RoundLayout, step: str, info: dict) -> dict:
    """Validated by the step's record type (a changed shape fails here, in the step that made it), then written."""
    record = STEP_RECORDS[step].model_validate(info)
    record.write(out.step(step))
    return record.dump()


def _write_table(rows: list[dict], schema: pa.Schema, uri) -> str:
    return write_parquet(pa.Table.from_pylist(rows, schema=schema), uri)


# --- steps ---------------------------------------------------------------------------


def step_intake(
    root: PathLike | StorageLayout,
    rnd: str,
    inbox: PathLike | None = None,
    cfg: Stage1Config = Stage1Config(),
    annotator: AnnotatorConfig | None = None,
) -> dict:
    """Human-verification intake: inbox/<round>/ → cumulative gold, gold-train/validation, discarded.

    Verifications without the five preference attributes are kept: ``annotator`` (the attribute annotator)
    generates them, as for the pool (cached), marked ``attributes_status: generated`` in the history; without
    one, or when its answer is invalid twice, the pair is gold without attributes (``attributes_missing``)."""
    store = layout(root)
    out = store.round(rnd)  # a published round stays published while it is re-run: its manifest is replaced last
    prev = store.previous_round(rnd)
    earlier = (
        gold_mod.seed_history(_read_any(store.seed, "gold"))
        if prev is None
        else _rows(store.round(prev).human_verifications)
    )
    intake = gold_mod.read_inbox(inbox if inbox is not None else store.inbox(rnd))
    new = _with_attributes([{**v, "round": rnd} for v in intake.verifications], annotator, store, cfg)
    history = earlier + new
    parts = gold_mod.build_gold(history, cfg.validation_fraction)
    if not parts["gold"] and intake.quarantine:  # the round stops below: its rejected verifications stay visible
        write_parquet(gold_mod.quarantine_table(intake.quarantine), out.table("intake_quarantine"))
    _require_inputs(store, rnd, len(parts["gold"]), intake.quarantine)
    gold_ids = {g["pair_id"] for g in parts["gold"]}
    if prev is None:
        silver, silver_source = _seed_silver(store, cfg, gold_ids)
    else:
        silver, silver_source = _rows(store.round(prev).silver), f"round {prev}"
    for name, table in gold_mod.tables(parts, history, intake.quarantine).items():
        write_parquet(table, out.table(name))
    # silver carried into this round; the best RM never trains on gold pairs
    _write_table([s for s in silver if s["pair_id"] not in gold_ids], PAIR_SCHEMA, out.silver_in)
    labels = {lab: sum(v["human_label"] == lab for v in new) for lab in gold_mod.HUMAN_LABELS}
    known = {pid for shard in store.pool.shards() for pid in _pair_ids(shard)} | {s["pair_id"] for s in silver}
    known |= {h["pair_id"] for h in earlier}
    return _step_record(
        out,
        "intake",
        {
            "previous_round": prev or SEED_ROUND,
            "silver_source": silver_source,
            "inbox_verifications": len(new),
            "inbox_quarantined": len(intake.quarantine),
            "inbox_conflicts": sum(c["round"] == rnd for c in parts["human_conflicts"]),
            "inbox_unknown_pairs": len({v["pair_id"] for v in new} - known),
            **{f"inbox_{k}": v for k, v in labels.items()},
            "inbox_attributes_generated": sum(v["attributes_status"] == "generated" for v in new),
            "inbox_attributes_missing": sum(v["attributes_status"] == "attributes_missing" for v in new),
            "gold": len(parts["gold"]),
            "gold_train": len(parts["gold_train"]),
            "gold_validation": len(parts["gold_validation"]),
            "discarded": len(parts["discarded"]),
            "silver_in": sum(s["pair_id"] not in gold_ids for s in silver),
        },
    )


def _with_attributes(
    verifications: list[dict], annotator: AnnotatorConfig | None, store: StorageLayout, cfg: Stage1Config
) -> list[dict]:
    """The verifications with their missing preference attributes generated (undecidable ones need none)."""
    todo = {
        v["pair_id"]: v for v in verifications if v["attributes_status"] is None and v["human_label"] != "undecidable"
    }
    generated = {}
    if todo and annotator is not None:
        table, _ = generate_attributes(list(todo.values()), annotator, store.llm_cache, cfg.seed)
        generated = {r["pair_id"]: r for r in table.to_pylist() if r["attributes_status"] == "generated"}
    out = []
    for v in verifications:
        if v["attributes_status"] is not None:
            out.append(v)
        elif v["pair_id"] in generated:
            g = generated[v["pair_id"]]
            out.append({**v, **{f: g[f] for f in ATTRIBUTE_FIELDS}, "attributes_status": "generated"})
        else:
            out.append({**v, "attributes_status": "attributes_missing"})
    return out


def step_attributes(
    root: PathLike | StorageLayout,
    rnd: str,
    shard_uri: PathLike,
    annotator: AnnotatorConfig | None,
    cfg: Stage1Config = Stage1Config(),
) -> dict:
    """Preference attributes for one pool shard (LLM, cached); writes rounds/<r>/pool_attributes/<shard>."""
    store = layout(root)
    rows = read_parquet(shard_uri).to_pylist()
    name = as_path(shard_uri).name
    log.info("attributes: %s", shard_position(name, [s.name for s in store.pool.shards()]))
    if annotator is None:
        status = [{**r, "attributes_status": "present" if has_attributes(r) else "attributes_missing"} for r in rows]
        table = pa.Table.from_pylist(status, schema=ATTRIBUTE_STATUS_SCHEMA)
        usage = {}
    else:
        table, usage = generate_attributes(rows, annotator, store.llm_cache, cfg.seed)
    write_parquet(table, store.round(rnd).pool_attributes_shard(name))
    statuses = table.column("attributes_status").to_pylist()
    counts = {s: statuses.count(s) for s in ("present", "generated", "attributes_missing")}
    return {"shard": name, "pairs": len(rows), **counts, "usage": usage}


def step_embed_shard(root: PathLike | StorageLayout, rnd: str, shard_name: str) -> dict:
    """Embeddings of one attributed pool shard, cached by pair_id + text under <root>/cache/embeddings/."""
    store = layout(root)
    log.info("embedding: %s", shard_position(shard_name, [s.name for s in store.pool.shards()]))
    rows = read_parquet(store.round(rnd).pool_attributes_shard(shard_name)).to_pylist()
    embed_rows(rows, store.embedding_cache(shard_name))
    return {"shard": shard_name, "pairs": len(rows), "device": resolve_device()}


def step_train(root: PathLike | StorageLayout, rnd: str, which: str, cfg: Stage1Config = Stage1Config()) -> dict:
    """``best``: BT RM on silver, checkpoint by gold accuracy → rm/.

    ``gold``: on gold-train, chosen on gold-validation → gold_rm/."""
    out = layout(root).round(rnd)
    train, select = {"best": (out.silver_in, out.gold), "gold": (out.gold_train, out.gold_validation)}[which]
    dest = out.rm(which)
    metrics = train_reward_model(_rows(train), _rows(select), cfg.rm_config, dest)
    info = {"uri": str(dest), **metrics}  # with the training curve ("history")
    return _step_record(out, f"train_{which}_rm", info)


def step_evaluate(root: PathLike | StorageLayout, rnd: str) -> dict:
    """p = σ(r_w − r_l) of the best RM for every gold pair; accuracy overall/per category; errors.

    Also calibrates both RMs on gold they did not train on (the best RM on all gold, the gold RM on
    gold-validation) and fits their joint weights on gold-validation → calibration.json.
    """
    out = layout(root).round(rnd)
    rm = RewardModel(out.best_rm)
    table, metrics = evaluate(rm, _rows(out.gold))
    rm.close()
    write_parquet(table, out.gold_eval)
    gold_rm = RewardModel(out.gold_rm)
    gold_table, gold_rm_metrics = evaluate(gold_rm, _rows(out.gold_validation))
    gold_rm.close()
    device, truncated = rm.device, rm.truncated + gold_rm.truncated
    best_diff = dict(zip(table.column("pair_id").to_pylist(), table.column("reward_diff").to_pylist()))
    validation = gold_table.column("pair_id").to_pylist()
    shared = {
        "best": np.array([best_diff[p] for p in validation]),
        "gold": np.array(gold_table.column("reward_diff").to_pylist()),
    }
    calibration = {"best": calibrate(np.array(list(best_diff.values()))), "gold": calibrate(shared["gold"])}
    weights, warnings = joint_weights(shared, calibration), rm_warnings(calibration)
    write_json({**calibration, "joint_weights": weights, "warnings": warnings}, out.calibration)
    info = {
        "best_rm_gold_accuracy": metrics["accuracy"],
        "per_category": metrics["per_category"],
        "errors": len(metrics["errors"]),
        "gold_rm_validation_accuracy": gold_rm_metrics["accuracy"],
        "calibration": {
            name: {k: c[k] for k in ("weight", "n", "ci_low", "ci_high", "significant", "ece_before", "ece_after")}
            | {"brier_before": c["brier_before"], "brier_after": c["brier_after"]}
            for name, c in calibration.items()
        },
        "rm_joint_weights": weights,
        "warnings": warnings,
        "device": device,
        "truncated": truncated,
    }
    write_json({**metrics, "gold_rm_validation": gold_rm_metrics}, out.gold_eval_metrics)
    return _step_record(out, "evaluate", info)


RM_BENCHMARK_SCHEMA = pa.schema(
    [("pair_id", pa.string()), ("subset", pa.string()), ("best_rm_right", pa.bool_()), ("gold_rm_right", pa.bool_())]
)


def sign_off_required(root: PathLike | StorageLayout, rnd: str, cfg: Stage1Config) -> str | None:
    """Why the round must wait for a human sign-off whatever ``sign_off`` says (None: it need not): its best RM
    regressed on a public RM benchmark and ``benchmark_gate`` is on."""
    step = layout(root).round(rnd).step("rm_benchmarks")
    if not cfg.benchmark_gate or not step.exists():
        return None
    regressed = RMBenchmarksRecord.read(step).regressed
    return f"the best RM regressed on the RM benchmark(s) {', '.join(regressed)}" if regressed else None


def step_rm_benchmarks(root: PathLike | StorageLayout, rnd: str, uris: list[str]) -> dict:
    """Both RMs of the round on each public RM benchmark (``models.rm_benchmarks``): reads the round's ``best_rm``
    and ``gold_rm`` and the previous published round's ``rm_benchmark`` tables; writes this round's
    ``rm_benchmark`` table per benchmark, then its ``rm_benchmarks`` step record (which benchmarks regressed)."""
    store = layout(root)
    out = store.round(rnd)
    if not uris:  # none configured: no record (one left by an earlier run of the round goes)
        if out.step("rm_benchmarks").exists():
            out.step("rm_benchmarks").unlink()
        return {}
    previous = store.previous_round(rnd)
    scores: dict[str, dict] = {}
    rms = {"best": RewardModel(out.best_rm), "gold": RewardModel(out.gold_rm)}
    try:
        for uri in uris:
            bench = load_benchmark(uri)
            right = {k: rm.reward_diff(bench.rows) > 0 for k, rm in rms.items()}
            table = {
                "pair_id": [r["pair_id"] for r in bench.rows],
                "subset": [r["subset"] for r in bench.rows],
                "best_rm_right": right["best"],
                "gold_rm_right": right["gold"],
            }
            write_parquet(pa.Table.from_pydict(table, schema=RM_BENCHMARK_SCHEMA), out.rm_benchmark(bench.name))
            subsets = table["subset"]
            scores[bench.name] = {
                "uri": str(uri),
                "pairs": len(bench.rows),
                "skipped": bench.skipped,
                "best_rm": summarize(subsets, right["best"]),
                "gold_rm": summarize(subsets, right["gold"]),
                **_versus(store, previous, bench.name, table),
            }
    finally:
        for rm in rms.values():
            rm.close()
    regressed = sorted(n for n, b in scores.items() if b.get("regressed"))
    return _step_record(out, "rm_benchmarks", {"benchmarks": scores, "regressed": regressed})


def _versus(store: StorageLayout, previous: str | None, name: str, table: dict) -> dict:
    """The best RM against the previous round's on the pairs both scored: the paired difference and whether it
    regressed beyond its interval; {} without a previous round that scored this benchmark."""
    before_uri = store.round(previous).rm_benchmark(name) if previous else None
    if before_uri is None or not before_uri.exists():
        return {}
    before = dict(zip(*read_parquet(before_uri, ["pair_id", "best_rm_right"]).to_pydict().values()))
    shared = [i for i, pid in enumerate(table["pair_id"]) if pid in before]
    if not shared:
        return {}
    now = np.asarray(table["best_rm_right"])[shared]
    then = np.array([before[table["pair_id"][i]] for i in shared])
    diff = paired_difference(then, now, seed=seeded_int("rm_benchmarks", name))
    return {"previous_round": previous, "vs_previous": diff, "regressed": diff["ci_high"] < 0}


def _pair_ids(uri) -> list[str]:
    return read_parquet(uri, ["pair_id"]).column("pair_id").to_pylist() if as_path(uri).exists() else []


def _labelled_ids(store: StorageLayout, rnd: str) -> set[str]:
    out = store.round(rnd)
    ids = {pid for t in (out.gold, out.silver_in, out.discarded, out.human_verifications) for pid in _pair_ids(t)}
    prev = store.previous_round(rnd)
    if prev:
        ids.update(_pair_ids(store.round(prev).review_queue_table))
    return ids


def step_retrieve(root: PathLike | StorageLayout, rnd: str, cfg: Stage1Config = Stage1Config()) -> dict:
    """Error-driven adaptive retrieval from the attributed pool; few-shot gold examples per retrieved pair."""
    store = layout(root)
    out = store.round(rnd)
    pool_rows, pool_vecs = [], []
    for shard in store.pool.shards():  # the pool's current shards only, never a re-prepared pool's leftovers
        rows = read_parquet(out.pool_attributes_shard(shard.name)).to_pylist()
        pool_rows += rows
        pool_vecs.append(embed_rows(rows, store.embedding_cache(shard.name)))
    vecs = np.concatenate(pool_vecs) if pool_vecs else np.zeros((0, embedding_dim()), np.float32)
    pool_ids = [r["pair_id"] for r in pool_rows]
    key = IndexCache.key(pool_ids, [text_sha(embedding_text(r)) for r in pool_rows], RECALL_TARGET)
    index, index_record = IndexCache(store.index_cache).get(key, vecs) if pool_rows else (None, {})
    gold_rows = _rows(out.gold)
    p_by_id = {r["pair_id"]: r["p"] for r in _rows(out.gold_eval)}
    gold_vecs = embed_rows(gold_rows, store.gold_embedding_cache(rnd))
    labelled = _labelled_ids(store, rnd)
    table = adaptive_retrieve(
        [g["pair_id"] for g in gold_rows],
        [p_by_id[g["pair_id"]] for g in gold_rows],
        gold_vecs,
        pool_ids,
        vecs,
        labelled,
        RetrievalConfig(k_max=cfg.k_max),
        index,
    )
    if cfg.retrieval != "adaptive":  # an ablation baseline, as many pairs as adaptive retrieval pulled
        table = _baseline_retrieval(cfg, out, pool_rows, labelled, table.num_rows)
    write_parquet(table, out.retrieval)
    wanted = sorted(set(table.column("pair_id").to_pylist()))
    index = {r["pair_id"]: i for i, r in enumerate(pool_rows)}
    retrieved = [{k: pool_rows[index[pid]][k] for k in ATTRIBUTE_STATUS_SCHEMA.names} for pid in wanted]
    _write_table(retrieved, ATTRIBUTE_STATUS_SCHEMA, out.retrieved)  # the status says whose guideline it is
    query_vecs = vecs[[index[pid] for pid in wanted]] if wanted else np.zeros((0, vecs.shape[1]), np.float32)
    examples = nearest_examples(query_vecs, wanted, gold_rows, gold_vecs, cfg.max_examples)
    write_parquet(examples_table(examples), out.examples)
    probe = probe_pairs(gold_rows, cfg.judge_probe, cfg.seed)  # the annotate tasks then need no encoder
    probe_examples = few_shot_examples(probe, gold_rows, cfg.max_examples, store.gold_embedding_cache(rnd))
    write_parquet(examples_table(probe_examples), out.probe_examples)
    k_dist = Counter(k_for_p(p_by_id[g["pair_id"]], cfg.k_max) for g in gold_rows)
    ks = table.column("k").to_pylist() if table.num_rows else []
    info = {
        "pool_pairs": len(pool_rows),
        "gold_pairs": len(gold_rows),
        "retrieved": len(wanted),
        "k_distribution": {str(k): k_dist[k] for k in sorted(k_dist)},
        "pulled_by_rm_errors": sum(1 for k in ks if k == cfg.k_max) if cfg.retrieval == "adaptive" else 0,
        "index": index_record,
        "policy": cfg.retrieval,
    }
    return _step_record(out, "retrieve", info)


def _baseline_retrieval(
    cfg: Stage1Config, out: RoundLayout, pool: list[dict], labelled: set[str], budget: int
) -> pa.Table:
    """Random or uncertainty retrieval of ``budget`` unlabelled pool pairs (the ``retrieval`` setting)."""
    if cfg.retrieval == "random":
        return random_retrieve([r["pair_id"] for r in pool], labelled, budget, cfg.seed)
    candidates = [r for r in pool if r["pair_id"] not in labelled]
    rm = RewardModel(out.best_rm)
    try:
        p = sigmoid(rm.reward_diff(candidates))
    finally:
        rm.close()
    log.info("retrieve: uncertainty sampling scored %d unlabelled pool pairs with the best RM", len(candidates))
    return uncertainty_retrieve([r["pair_id"] for r in candidates], p, (), budget)


def step_annotate(
    root: PathLike | StorageLayout,
    rnd: str,
    annotator: AnnotatorConfig,
    cfg: Stage1Config = Stage1Config(),
    n_annotators: int = 1,
) -> dict:
    """A blind probe of gold pairs that measures ONE annotator (accuracy, position bias; the DAG maps over
    annotators), then its preference-aware annotation of the retrieved pairs. The probe goes first: it is small, so
    an endpoint that cannot be reached fails the round there, within seconds (its circuit breaker)."""
    store = layout(root)
    out = store.round(rnd)
    annotator = with_samples(cfg, annotator)
    pairs = _rows(out.retrieved) if cfg.retrieved_to == "judges" else []  # the ablation modes ask no judge
    budget = task_budget(cfg, n_annotators)
    gold = _rows(out.gold)
    annotator, chosen, probe_samples, probe_usage = judge_probe(store, rnd, annotator, cfg, budget)
    samples, usage = judge(pairs, read_examples(out.examples, gold), annotator, store.llm_cache, cfg, budget)
    write_parquet(probe_samples, out.probe(annotator.name))
    write_parquet(samples, out.samples(annotator.name))
    work = {"annotator": annotator.model_dump(), "asking": chosen, "usage": usage[annotator.name]["work"]}
    write_json({**work, "probe_usage": probe_usage[annotator.name]["work"]}, out.usage(annotator.name))
    keys = ("requests", "cache_hits", "errors", "new_cost_usd")
    counts = {k: usage[annotator.name][k] + probe_usage[annotator.name][k] for k in keys}
    probed = len(probe_pairs(gold, cfg.judge_probe, cfg.seed))
    return {"annotator": annotator.name, "pairs": len(pairs), "probe_pairs": probed, **counts}


def probe_pairs(gold: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` gold pairs for measuring the judges."""
    return seeded_sample(gold, n, "probe", seed)


def judge_probe(
    root: PathLike | StorageLayout,
    rnd: str,
    annotator: AnnotatorConfig,
    cfg: Stage1Config = Stage1Config(),
    budget: Budget | None = None,
) -> tuple[AnnotatorConfig, dict | None, pa.Table, dict]:
    """One annotator on the round's blind gold probe (``probe_judge``): how it is asked from now on, what the probe
    chose (None: as configured), its samples and usage."""
    out = layout(root).round(rnd)
    gold = _rows(out.gold)
    probe, examples = probe_pairs(gold, cfg.judge_probe, cfg.seed), read_examples(out.probe_examples, gold)
    return probe_judge(probe, examples, annotator, layout(root).llm_cache, cfg, budget)


def step_merge(
    root: PathLike | StorageLayout,
    rnd: str,
    annotator_names: list[str],
    cfg: Stage1Config = Stage1Config(),
) -> dict:
    """Merge annotators → silver (agreeing labels) + review queue (contested) for the humans' next day.

    The judges' reliability measured on the gold probe is written to judges.json (the ``weighted`` merge
    and stage 2 use it)."""
    out = layout(root).round(rnd)
    names = sorted(annotator_names)
    sample_tables = [read_parquet(out.samples(n)) for n in names]
    probes = [read_parquet(out.probe(n)) for n in names if out.probe(n).exists()]
    judges = judge_reliability(pa.concat_tables(probes)) if probes else {}
    for name, stats in judges.get("annotators", {}).items():  # how an ``order: auto`` judge is asked from now on
        stats["asking"] = read_json(out.usage(name)).get("asking") if out.usage(name).exists() else None
    write_json(judges, out.judges)
    accuracy = {n: j["accuracy"] for n, j in judges.get("annotators", {}).items() if j["accuracy"] is not None}
    retrieved = _rows(out.retrieved)
    votes = counted_samples(sample_tables, judges)  # an uninformative judge counts zero under every policy
    merged = merge_samples(votes, cfg.merge_policy, accuracy, [r["pair_id"] for r in retrieved])
    write_parquet(merged, out.verdicts)
    verdicts = {
        r["pair_id"]: r["annotator_verdicts"] for r in merged.select(["pair_id", "annotator_verdicts"]).to_pylist()
    }
    confidence, pool_prior = label_confidence(verdicts, judges) if cfg.silver_precision > 0.5 else ({}, None)
    silver, queue, counts = merge_into_silver(
        _rows(out.silver_in),
        retrieved,
        merged,
        rnd,
        cfg.spot_check,
        cfg.seed,
        cfg.retrieved_to,
        cfg.review_order,
        confidence or None,
        cfg.silver_precision,
    )
    joined = [r["pair_id"] for r in silver if r.get("round") == rnd and r.get("provenance") == "llm"]
    estimated = [max(confidence[p], 1 - confidence[p]) for p in joined if p in confidence]
    _write_table(silver, PAIR_SCHEMA, out.silver)
    _write_table(queue, QUEUE_SCHEMA, out.review_queue_table)
    write_jsonl(queue, out.review_queue_jsonl)
    write_bytes(out.review_tasks, gold_mod.dumps_tasks(queue, cfg.seed).encode())
    usage = {n: _total_usage(read_json(out.usage(n))) for n in names}
    info = {
        **counts,
        "verdicts": status_counts(merged),
        "annotator_stats": annotator_stats(pa.concat_tables(sample_tables)) if sample_tables else {},
        "judges": judges,
        # the pool's estimated share of right labels and the model's precision of this round's new silver pairs
        "pool_prior": None if pool_prior is None else round(pool_prior, 6),
        "silver_estimated_precision": round(sum(estimated) / len(estimated), 6) if estimated else None,
        "usage": usage,
        "cost_usd": round(sum(u.get("cost_usd", 0) for u in usage.values()), 6),
        "tokens": sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values()),
    }
    return _step_record(out, "merge", info)


def _total_usage(record: dict) -> dict:
    """Tokens and cost of an annotator's work in the round: the retrieved pairs plus its gold probe."""
    parts = [record["usage"], record.get("probe_usage", {})]
    return {k: round(sum(p.get(k, 0) for p in parts), 6) for k in ("prompt_tokens", "completion_tokens", "cost_usd")}


def step_publish(root: PathLike | StorageLayout, rnd: str, params: dict | None = None) -> RoundManifest:
    """Round manifest (counts at every step, metrics, artifact list) — written LAST."""
    out = layout(root).round(rnd)
    remove_stale(out.pool_attributes, {s.name for s in layout(root).pool.shards()})
    manifest = round_manifest(root, rnd, params)
    manifest.write(out.manifest)
    return manifest


def round_manifest(root: PathLike | StorageLayout, rnd: str, params: dict | None = None) -> RoundManifest:
    """What the manifest of a round whose steps are all recorded says (also a preview before publishing)."""
    out = layout(root).round(rnd)
    steps = {p.name[:-5]: read_json(p) for p in list_files(out.steps, (".json",))}
    for required in STEPS:
        if required not in steps:
            raise RuntimeError(f"round {rnd}: step {required} has not completed; refusing to publish")
    judges = steps["merge"].get("judges", {})
    prefix = len(str(out.dir.path)) + 1
    artifacts = sorted(
        str(p.path)[prefix:] for p in out.dir.rglob("*") if p.is_file() and not p.name.startswith((".", MANIFEST))
    )
    intake = steps["intake"]
    summary = {
        "silver_source": intake.get("silver_source"),
        **{k: intake.get(k) for k in INTAKE_SUMMARY},
        "gold": steps["intake"]["gold"],
        "silver": steps["merge"]["silver_total"],
        "silver_estimated_precision": steps["merge"].get("silver_estimated_precision"),
        "best_rm_gold_accuracy": steps["evaluate"]["best_rm_gold_accuracy"],
        "gold_rm_validation_accuracy": steps["evaluate"]["gold_rm_validation_accuracy"],
        "retrieved": steps["retrieve"]["retrieved"],
        "review_queue": steps["merge"]["review_queue"],
        "cost_usd": steps["merge"]["cost_usd"],
        "tokens": steps["merge"]["tokens"],
        "judges": {
            n: {k: j[k] for k in ("accuracy", "ci_low", "ci_high", "n")}
            for n, j in judges.get("annotators", {}).items()
        },
        "warnings": steps["evaluate"].get("warnings", []) + judge_warnings(judges) + judge_advice(judges),
    }
    return RoundManifest.model_validate(
        {
            "kind": "stage1_round",
            "round": rnd,
            "previous_round": steps["intake"]["previous_round"],
            "steps": steps,
            "params": params or {},
            "artifacts": artifacts,
            "summary": summary,
        }
    )
