"""Stage-2 steps on a hand-made round (the whole stage runs end to end in test_e2e_dags.py)."""

import pyarrow.parquet as pq
import pytest

from conftest import LengthRule, LongerIsBetter
from synpref.io.layout import StorageLayout
from synpref.io.preprocess import ConservationError
from synpref.io.storage import read_parquet, write_json, write_parquet
from synpref.models.reward_model import RMConfig, train_reward_model
from synpref.records import PoolManifest, RecordFormatError, ShardScores
from synpref.settings import Stage2Config
from synpref.simulation.synthetic import generate
from synpref.stage2.steps import Stage2Run, step_check_conservation, step_decide, step_score

RND = "2026-11-01"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A published round (gold + two tiny frozen RMs) and one shard of 60 pairs, 20 of them gold."""
    tmp = tmp_path_factory.mktemp("stage2")
    store = StorageLayout(tmp / "root")
    pairs, _ = generate(60, seed=3, categories=("harmful", "scary_harmless"))
    rows = pairs.to_pylist()
    rnd = store.round(RND)
    write_parquet(pairs.slice(0, 20), rnd.gold)
    cfg = RMConfig(mode="frozen", head_epochs=3)
    train_reward_model(rows[:20], rows[20:30], cfg, rnd.best_rm)
    train_reward_model(rows[:20], rows[20:30], cfg, rnd.gold_rm)
    write_json({"round": RND}, rnd.manifest)
    shard = tmp / "shard-00000.parquet"
    write_parquet(pairs, shard)
    return store, shard, rows


def test_gold_rm_never_scores_gold_pairs(world, tmp_path):
    """Stage-2 scoring marks pairs already in gold and leaves their gold-RM p empty."""
    store, shard, rows = world
    run = store.stage2("scored")
    info = step_score(Stage2Run.at(store, run, RND, Stage2Config(decision_rule="paper")), shard)
    scores = {r["pair_id"]: r for r in pq.read_table(run.shard(shard).scores).to_pylist()}
    assert info.in_gold == 20
    assert all(scores[r["pair_id"]]["in_gold"] for r in rows[:20])
    assert all(scores[r["pair_id"]]["logit_gold"] is None for r in rows[:20])
    assert all(scores[r["pair_id"]]["logit_gold"] is not None for r in rows[20:])


def test_a_new_signal_and_rule_run_through_the_shard_steps(world):
    """The toy signal/rule of test_consistency, passed to the steps: its column is scored and its rule decides."""
    store, shard, rows = world
    run = store.stage2("toy")
    step_score(Stage2Run.at(store, run, RND, Stage2Config()), shard, signals=[LongerIsBetter()], rule=LengthRule())
    scores = pq.read_table(run.shard(shard).scores)
    assert "logit_length" in scores.column_names
    info = step_decide(
        Stage2Run.at(store, run, RND, Stage2Config()), shard, []
    )  # the rule stored with the shard decides
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows[20:])
    assert info.kept == 20 + longer  # gold pairs keep their label
    assert info.dropped == 40 - longer
    assert info.rule == {"kind": "length"}


def test_the_reliability_rule_refuses_a_round_without_calibration(world):
    store, shard, _ = world
    with pytest.raises(FileNotFoundError, match="decision_rule=paper"):
        step_score(Stage2Run.at(store, store.stage2("old-round"), RND, Stage2Config()), shard)


def _scored(world, name: str) -> tuple:
    store, shard, rows = world
    run = store.stage2(name)
    step_score(Stage2Run.at(store, run, RND, Stage2Config()), shard, signals=[LongerIsBetter()], rule=LengthRule())
    return store, run, shard, rows


def test_a_finished_shard_is_skipped_only_while_its_content_is_the_same(world, tmp_path):
    store, shard, rows = world
    run = store.stage2("fingerprint")
    cfg = Stage2Config(decision_rule="paper")
    first = step_score(Stage2Run.at(store, run, RND, cfg), shard)
    scores_file = run.shard(shard).scores
    scores_file.unlink()
    assert step_score(Stage2Run.at(store, run, RND, cfg), shard) == first  # same input: skipped (nothing rewritten)
    assert not scores_file.exists()
    write_parquet(read_parquet(shard).slice(0, 50), tmp_path / shard.name)  # a user removed 10 rows
    changed = step_score(Stage2Run.at(store, run, RND, cfg), tmp_path / shard.name)
    assert changed.fingerprint != first.fingerprint
    assert changed.pairs == 50
    assert read_parquet(scores_file).num_rows == 50


def test_decide_refuses_scores_routed_unlike_the_stored_rule(world):
    store, run, shard, _ = _scored(world, "stale")
    marker = run.shard(shard).scores_marker
    record = ShardScores.read(marker)
    table = read_parquet(run.shard(shard).scores)
    flags = [True] * table.num_rows  # scores edited by hand (or by another rule) after the rule was stored
    write_parquet(
        table.set_column(table.schema.get_field_index("routed_to_llm"), "routed_to_llm", [flags]),
        run.shard(shard).scores,
    )
    assert record.rule == {"kind": "length"}
    with pytest.raises(ConservationError, match="routed unlike their stored scores"):
        step_decide(Stage2Run.at(store, run, RND, Stage2Config()), shard, [])


def _pool_manifest(run, shard, count: int) -> None:
    manifest = PoolManifest(
        kind="pool",
        counts={
            "input": count,
            "pool": count,
            "quarantined": 0,
            "duplicates": 0,
            "contaminated": 0,
            "label_conflicts": 0,
        },
        shards=[{"name": shard.name, "count": count}],
        files=[],
        skipped_files=[],
    )
    manifest.write(run.prepared.manifest)


def test_conservation_fails_loudly_on_a_shard_without_decisions(world):
    store, run, shard, _ = _scored(world, "undecided")
    _pool_manifest(run, shard, 60)
    with pytest.raises(ConservationError, match="has no decisions"):
        step_check_conservation(run, [str(shard)])


def test_conservation_fails_loudly_when_a_shard_decided_fewer_pairs_than_it_holds(world):
    store, run, shard, _ = _scored(world, "short")
    step_decide(Stage2Run.at(store, run, RND, Stage2Config()), shard, [])
    _pool_manifest(run, shard, 61)
    with pytest.raises(ConservationError, match="decided 60 pairs but the shard holds 61"):
        step_check_conservation(run, [str(shard)])


def test_conservation_fails_loudly_when_a_marker_does_not_add_up(world):
    store, run, shard, _ = _scored(world, "lost")
    decided = step_decide(Stage2Run.at(store, run, RND, Stage2Config()), shard, [])
    _pool_manifest(run, shard, 60)
    decided.model_copy(update={"dropped": decided.dropped - 1}).write(run.shard(shard).success)
    with pytest.raises(ConservationError, match="input 60 != kept"):
        step_check_conservation(run, [str(shard)])


def test_a_marker_of_the_wrong_shape_is_a_one_line_error(world):
    store, run, shard, _ = _scored(world, "garbled")
    _pool_manifest(run, shard, 60)
    write_json({"shard": shard.name, "input": 60}, run.shard(shard).success)
    with pytest.raises(RecordFormatError, match="not a ShardDecided record"):
        step_check_conservation(run, [str(shard)])


def test_the_score_step_chooses_the_few_shot_examples_and_annotate_needs_no_encoder(world, sim_server, monkeypatch):
    from conftest import annotator_cfg
    from synpref.models import embedding
    from synpref.stage2.steps import step_annotate_shard

    store, shard, rows = world
    run = store.stage2("examples")
    cfg = Stage2Config(decision_rule="paper", band=0.5, max_examples=2)  # band 0.5: every pair is routed
    step_score(Stage2Run.at(store, run, RND, cfg), shard)
    stored = read_parquet(run.shard(shard).examples).to_pylist()
    gold_ids = {r["pair_id"] for r in rows[:20]}
    assert {r["pair_id"] for r in stored} == {r["pair_id"] for r in rows[20:]}
    assert all(len(r["examples"]) == 2 and set(r["examples"]) <= gold_ids for r in stored)

    def no_encoder(*args):
        raise AssertionError("an annotate task loaded the encoder")

    monkeypatch.setattr(embedding, "_model", no_encoder)
    info = step_annotate_shard(
        Stage2Run.at(store, run, RND, cfg), shard, [annotator_cfg(sim_server, "good", samples=1)]
    )
    assert info["pairs"] == 40
    assert info["annotators"]["good"]["requests"] == 40


def test_the_judging_bill_counts_requests_tokens_and_cost_per_pair(world, sim_server):
    from conftest import annotator_cfg
    from synpref.stage2.steps import judging_bill, step_annotate_shard

    store, shard, rows = world
    run = store.stage2("bill")
    cfg = Stage2Config(decision_rule="paper", band=0.5, max_examples=0)  # every non-gold pair is routed
    step_score(Stage2Run.at(store, run, RND, cfg), shard)
    annotators = [
        annotator_cfg(sim_server, name, verdicts=verdicts) for name, verdicts in (("good", "auto"), ("ok", "sampled"))
    ]
    step_annotate_shard(
        Stage2Run.at(store, run, RND, cfg), shard, annotators
    )  # the paper rule: every annotator judges every pair
    bill = judging_bill([run.shard(shard)], {"input": 60, "kept": 25, "recycled": 5}, annotators)
    good, ok = bill.annotators["good"], bill.annotators["ok"]
    assert good.requests == 40 and good.stopped == {"logprobs": 40}  # one request a pair
    assert ok.requests == 40 and ok.stopped == {"all_samples": 40}  # its three samples in one request a pair
    assert (good.samples, ok.samples) == (40, 120)
    assert bill.requests_per_input_pair == round((good.requests + ok.requests) / 60, 4)
    assert bill.cost_usd == round(good.cost_usd + ok.cost_usd, 6) > 0
    assert bill.cost_per_1k_curated_usd == round(1000 * bill.cost_usd / 30, 6)


def test_judges_in_sequence_ask_the_next_annotator_only_while_the_rule_leaves_a_pair_open(world, sim_server):
    """The reliability rule settles pairs across annotators: every routed pair is judged by the most reliable
    annotator, a later one sees only the pairs still open, each pair records why it settled, the decide step
    counts what was asked, and a re-run writes the same samples from the cache."""
    from conftest import annotator_cfg
    from synpref.stage2.consistency import ReliabilityRule
    from synpref.stage2.steps import judging_bill, step_annotate_shard

    store, shard, rows = world
    stats = {"n": 60, "significant": True}
    judges = {
        n: {
            **stats,
            "accuracy": a,
            "single": {**stats, "accuracy": a - 0.03},
            "unanimous": {**stats, "accuracy": a},
            "split": {**stats, "accuracy": 0.6},
        }
        for n, a in (("good", 0.85), ("ok", 0.8), ("meh", 0.75))
    }
    rule = ReliabilityRule(rm_weights={"best": 0.5, "gold": 0.5}, judges=judges, rm_only_confidence=0.995)
    # given in any order; one request a sample, so a pair can settle on one vote of an annotator
    annotators = [annotator_cfg(sim_server, n, choices_per_request=1) for n in ("meh", "ok", "good")]
    asked = {}
    for name, in_sequence in (("all", False), ("sequence", True)):
        run = store.stage2(name)
        cfg = Stage2Config(max_examples=0, judges_in_sequence=in_sequence)
        step_score(Stage2Run.at(store, run, RND, cfg), shard, rule=rule)
        step_annotate_shard(Stage2Run.at(store, run, RND, cfg), shard, annotators)
        asked[name] = {a: read_parquet(run.shard(shard).samples(a)) for a in ("good", "ok", "meh")}
    routed = set(asked["all"]["good"].column("pair_id").to_pylist())
    seq = asked["sequence"]
    per = {a: set(t.column("pair_id").to_pylist()) for a, t in seq.items()}
    assert per["good"] == routed  # the most reliable first, on every routed pair
    assert per["meh"] <= per["ok"] < per["good"]  # later annotators see only what is still open
    assert sum(t.num_rows for t in seq.values()) < sum(t.num_rows for t in asked["all"].values())
    reasons = [r for t in seq.values() for r in t.column("settled").to_pylist() if r]
    assert len(reasons) == len(routed)  # one reason per pair, on its last sample
    assert set(reasons) <= {"confident", "confident_flipped", "hopeless", "no_informative_judge", "all_annotators"}
    assert all(r is None for t in asked["all"].values() for r in t.column("settled").to_pylist())
    early = [r for t in seq.values() for r in t.to_pylist() if r["stopped"] == "sequence"]
    assert early and all(r["settled"] in ("confident", "confident_flipped", "hopeless") for r in early)
    assert any(r["sample"] == 0 for r in early)  # settled on one vote of an annotator, its other samples unasked

    run = store.stage2("sequence")
    before = {a: run.shard(shard).samples(a).read_bytes() for a in per}
    step_annotate_shard(Stage2Run.at(store, run, RND, Stage2Config(max_examples=0)), shard, annotators)
    assert {a: run.shard(shard).samples(a).read_bytes() for a in per} == before
    decided = step_decide(Stage2Run.at(store, run, RND, Stage2Config()), shard, list(per))
    assert decided.kept + decided.recycled + decided.dropped == 60
    bill = judging_bill([run.shard(shard)], {"input": 60}, annotators)
    assert sum(bill.settled.values()) == len(routed)


def _annotate_through_batches(store, run, shard, annotators, cfg) -> tuple[dict, list]:
    """What the DAG's BatchJudging operator does, without Airflow: judge, submit what is pending, wait, ingest,
    judge again until nothing is pending. Returns the step's result and the batch outcomes."""
    import time

    from synpref.llm.batch import IN_PROGRESS, by_annotator, ingest, status, submit
    from synpref.stage2.steps import step_annotate_shard

    by_name, outcomes = {a.name: a for a in annotators}, []
    records = run.shard(shard).batches
    for _ in range(60):  # a batch per wave and annotator, and retries of what failed
        pending = []
        result = step_annotate_shard(Stage2Run.at(store, run, RND, cfg), shard, annotators, 1, pending)
        if not pending:
            return result, outcomes
        assert result["pending"] == len(pending)
        for name, requests in by_annotator(pending).items():
            sub = submit(by_name[name], requests, records, {"test": "batch"})
            while status(by_name[name], sub.batch_id) in IN_PROGRESS:
                time.sleep(0.2)
            outcomes.append(ingest(by_name[name], sub, store.llm_cache, records))
    raise AssertionError(f"batches never answered everything: {outcomes[:4]}")


def test_batch_mode_judges_through_the_batch_api_and_writes_what_the_online_run_writes(world, sim_truth):
    """Batch-mode annotators: the step asks nothing online, the SIMULATED Batch API answers (one batch partly
    failing, one expiring half-done), only what is missing is resubmitted, and the samples are byte-identical to
    an online run's on the same cached answers; a re-run submits no batch; outside a batch-capable task, a
    batch-mode annotator is a one-line error."""
    from conftest import annotator_cfg
    from synpref.llm.client import AnnotatorError
    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex
    from synpref.stage2.steps import step_annotate_shard

    store, shard, rows = world
    _, _, truth, _, gtruth = sim_truth
    server = SimulatedJudgeServer(
        TruthIndex.from_tables(truth, gtruth), {"good": JudgeProfile(0.85), "ok": JudgeProfile(0.8)}, api_key="sk-test"
    )
    server.start()
    server.batches.delay_s, server.batches.fail_share, server.batches.expire_next = 0.2, 0.2, 1
    try:
        cfg = Stage2Config(decision_rule="paper", band=0.5, max_examples=0)  # every non-gold pair is routed
        online = [annotator_cfg(server, n) for n in ("good", "ok")]
        batch = [a.model_copy(update={"mode": "batch"}) for a in online]
        run_b, run_o = store.stage2("batch"), store.stage2("online")
        step_score(Stage2Run.at(store, run_b, RND, cfg), shard)
        step_score(Stage2Run.at(store, run_o, RND, cfg), shard)
        asked_online = server.counts.total()
        result, outcomes = _annotate_through_batches(store, run_b, shard, batch, cfg)
        assert server.counts.total() - asked_online == sum(o.answered for o in outcomes)  # only through batches
        assert any(o.status == "expired" for o in outcomes) and any(o.failed for o in outcomes)
        assert len(outcomes) >= 3  # a retry batch for what failed
        assert result["pairs"] == 40 and set(result["annotators"]) == {"good", "ok"}

        before = server.batches.created
        again, _ = _annotate_through_batches(store, run_b, shard, batch, cfg)  # a re-run: all cached
        assert server.batches.created == before and again == result

        step_annotate_shard(Stage2Run.at(store, run_o, RND, cfg), shard, online)
        for a in ("good", "ok"):
            assert run_o.shard(shard).samples(a).read_bytes() == run_b.shard(shard).samples(a).read_bytes()
        assert server.counts.total() - asked_online == sum(o.answered for o in outcomes)  # online asked nothing new
        with pytest.raises(AnnotatorError, match="mode: batch"):
            step_annotate_shard(Stage2Run.at(store, run_o, RND, cfg), shard, batch)
    finally:
        server.stop()


def test_an_unreachable_judge_fails_the_annotate_task_in_one_line(world):
    import socket

    from synpref.llm.client import AnnotatorConfig, EndpointUnreachable
    from synpref.stage2.steps import step_annotate_shard

    store, shard, rows = world
    run = store.stage2("unreachable")
    cfg = Stage2Config(decision_rule="paper", band=0.5, max_examples=0)  # band 0.5: every pair is routed
    step_score(Stage2Run.at(store, run, RND, cfg), shard)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    typo = AnnotatorConfig(name="typo", base_url=url, model="m")
    with pytest.raises(EndpointUnreachable, match=f"annotator 'typo' cannot reach {url}: connection refused"):
        step_annotate_shard(Stage2Run.at(store, run, RND, cfg), shard, [typo])
    assert not run.shard(shard).samples("typo").exists()
