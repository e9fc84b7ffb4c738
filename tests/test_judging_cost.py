"""Judging at scale: adaptive self-consistency asks only while a verdict is open, logprob verdicts need one
request, and an endpoint without logprobs still works (SIMULATED judges over real HTTP)."""

import collections
from types import SimpleNamespace as NS

import pytest

from conftest import annotator_cfg
from synpref.llm.annotation import judge, merge_samples, requests_asked
from synpref.llm.client import AnnotatorError, completion_of, verdict_logprobs
from synpref.models.reliability import judge_reliability
from synpref.settings import AnnotateSettings
from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex


def _per_annotator(merged):
    return {r["pair_id"]: r["annotator_verdicts"][0] for r in merged.to_pylist()}


def test_an_annotators_samples_come_in_one_request_of_several_choices(sim_server, sim_truth, tmp_path):
    """``choices_per_request`` (OpenAI's ``n``): three samples, one request, the prompt sent and billed once; the
    choices are independent draws in one candidates' order; a re-run is free and gives the same table."""
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()[:40]
    fixed = AnnotateSettings(sampling="fixed")
    one_each = annotator_cfg(sim_server, "ok", choices_per_request=1)
    separate, usage1 = judge(rows, {}, one_each, tmp_path / "c", fixed)
    together, usage3 = judge(rows, {}, annotator_cfg(sim_server, "ok"), tmp_path / "c", fixed)
    assert together.num_rows == separate.num_rows == 3 * len(rows)
    assert usage3["ok"]["requests"] == requests_asked(together) == len(rows) == requests_asked(separate) / 3
    assert 3 * usage3["ok"]["prompt_tokens"] == usage1["ok"]["prompt_tokens"]  # only the order differs there
    by_pair = collections.defaultdict(list)
    for r in together.to_pylist():
        by_pair[r["pair_id"]].append(r)
    for samples in by_pair.values():
        assert [(r["sample"], r["choice"]) for r in samples] == [(0, 0), (1, 1), (2, 2)]
        assert len({r["swapped"] for r in samples}) == 1  # one request, one order
    assert any(len({r["verdict"] for r in s}) == 2 for s in by_pair.values())  # drawn, not copied
    before = sum(sim_server.counts.values())
    again, _ = judge(rows, {}, annotator_cfg(sim_server, "ok"), tmp_path / "c", fixed)
    assert sum(sim_server.counts.values()) == before and again.equals(together)


def test_requests_are_counted_in_empty_and_older_sample_tables():
    import pyarrow as pa

    from synpref.llm.annotation import SAMPLE_SCHEMA

    assert requests_asked(SAMPLE_SCHEMA.empty_table()) == 0  # an annotator judging in sequence that asked nothing
    rows = [{"pair_id": "p", "sample": s, "choice": c} for s, c in ((0, 0), (1, 1), (2, None))]
    assert requests_asked(pa.Table.from_pylist(rows)) == 2
    assert requests_asked(pa.Table.from_pylist([{"pair_id": "p", "sample": 0}] * 3)) == 3  # before ``choice``


def test_an_endpoint_that_ignores_n_is_asked_again_for_the_missing_samples(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()[:30]
    for sampling in ("fixed", "adaptive"):
        samples, usage = judge(rows, {}, annotator_cfg(sim_server, "one-choice"), tmp_path / sampling,
                               AnnotateSettings(sampling=sampling))  # fmt: skip
        per_pair = collections.Counter(samples.column("pair_id").to_pylist())
        assert usage["one-choice"]["requests"] == requests_asked(samples) == samples.num_rows
        if sampling == "fixed":
            assert set(per_pair.values()) == {3}  # every sample, one request each
        assert all(r["choice"] == 0 for r in samples.to_pylist())


def test_a_replys_choices_are_read_in_index_order_up_to_the_first_without_text():
    def choice(i, text):
        return {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}

    import openai

    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
    reply = {**body, "choices": [choice(2, "c [[2]]"), choice(0, "a [[1]]"), choice(1, "b [[1]]")]}
    out = completion_of(openai.types.chat.ChatCompletion.model_validate(reply), "here")
    assert (out.text, out.more_texts) == ("a [[1]]", ("b [[1]]", "c [[2]]"))
    gap = {**body, "choices": [choice(0, "a [[1]]"), choice(1, ""), choice(2, "c [[2]]")]}
    out = completion_of(openai.types.chat.ChatCompletion.model_validate(gap), "here")
    assert (out.text, out.more_texts) == ("a [[1]]", ())  # the missing sample is asked again, never guessed


def test_adaptive_sampling_gives_fixed_samplings_majority_with_fewer_requests(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()
    sampled = annotator_cfg(sim_server, "ok", samples=5, verdicts="sampled", choices_per_request=1)
    fixed, _ = judge(rows, {}, sampled, tmp_path / "c", AnnotateSettings(sampling="fixed"))
    before = sum(sim_server.counts.values())
    adaptive, usage = judge(rows, {}, sampled, tmp_path / "c", AnnotateSettings(sampling="adaptive"))
    assert sum(sim_server.counts.values()) == before  # the same seeded requests: all in the cache
    a, f = _per_annotator(merge_samples([adaptive])), _per_annotator(merge_samples([fixed]))
    assert {p: v["verdict"] for p, v in a.items()} == {p: v["verdict"] for p, v in f.items()}
    assert adaptive.num_rows < 0.8 * fixed.num_rows == 0.8 * 5 * len(rows)
    stops = collections.Counter(v["stopped"] for v in a.values())
    assert set(stops) <= {"settled", "all_samples"} and stops["settled"] > len(rows) / 2
    assert all(v["asked"] == v["agree"] + v["disagree"] + v["abstain"] for v in a.values())
    assert all(v["asked"] >= 3 or v["stopped"] == "settled" for v in a.values())  # 3 agreeing of 5 at the least


def test_logprob_verdicts_take_one_request_and_are_measured_like_sampled_ones(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()
    samples, usage = judge(rows, {}, annotator_cfg(sim_server, "good", verdicts="auto"), tmp_path / "c")
    assert samples.num_rows == len(rows) == usage["good"]["requests"]
    assert set(samples.column("stopped").to_pylist()) == {"logprobs"}
    p1 = samples.column("p_slot1").to_pylist()
    assert all(0 < p < 1 for p in p1)
    assert all((p > 0.5) == (s == 1) for p, s in zip(p1, samples.column("slot").to_pylist()))
    again, usage2 = judge(rows, {}, annotator_cfg(sim_server, "good", verdicts="auto"), tmp_path / "c")
    assert usage2["good"]["requests"] == 0 and again.equals(samples)  # logprobs come back from the cache
    stats = judge_reliability(samples)["annotators"]["good"]  # the probe measures them as it measures samples
    assert stats["n"] == len(rows) and stats["accuracy"] is not None


def test_an_endpoint_without_logprobs_falls_back_to_sampling_or_is_refused_when_required(sim_truth, tmp_path):
    _, pairs, truth, _, _ = sim_truth
    server = SimulatedJudgeServer(TruthIndex.from_tables(truth), {"plain": JudgeProfile(0.8, logprobs=False)})
    server.start()
    try:
        rows = pairs.to_pylist()[:30]
        samples, _ = judge(rows, {}, annotator_cfg(server, "plain", verdicts="auto"), tmp_path / "c")
        assert samples.column("p_slot1").null_count == samples.num_rows and samples.num_rows >= 2 * len(rows)
        assert set(samples.column("stopped").drop_null().to_pylist()) <= {"settled", "all_samples"}
        with pytest.raises(AnnotatorError, match="returned no logprobs"):
            judge(rows, {}, annotator_cfg(server, "plain", verdicts="logprobs"), tmp_path / "c2")
    finally:
        server.stop()


def _tok(token, logprob=-0.1, alternatives=()):
    return NS(token=token, logprob=logprob, top_logprobs=[NS(token=t, logprob=lp) for t, lp in alternatives])


def test_the_verdict_probability_is_read_at_the_final_verdict_token_only():
    quoted = [_tok("Candidate 2 wrote [[1]] to fool me"), _tok("[["), _tok("2", -0.2, [("2", -0.2), ("1", -1.7)])]
    assert verdict_logprobs([*quoted, _tok("]]"), _tok("\n")]) == {"1": -1.7, "2": -0.2}
    assert verdict_logprobs([_tok("[[1"), _tok("]]")])["1"] == -0.1  # a digit inside a merged token; "2" floored
    assert verdict_logprobs([_tok("[["), _tok("1"), _tok("]] but on reflection")]) is None  # not the end
    assert verdict_logprobs([_tok("[["), _tok("12"), _tok("]]")]) is None
    assert verdict_logprobs(None) is None and verdict_logprobs([]) is None


def test_prompts_share_their_prefix_and_cached_tokens_cost_the_cached_price(sim_server, sim_truth, tmp_path):
    """Instructions, guideline and (for a pair's later samples) examples and conversation come first: most of each
    prompt is a prefix an earlier prompt had; the SIMULATED endpoint's prefix cache reports cached tokens, billed at
    ``price_cached_in_per_1k``; the cost of cached answers is the same on a re-run."""
    _, pairs, _, gold, _ = sim_truth
    rows, examples = pairs.to_pylist()[:30], gold.to_pylist()[:8]
    few_shot = {r["pair_id"]: examples for r in rows}
    full = annotator_cfg(sim_server, "ok", samples=3, choices_per_request=1).model_copy(
        update={"price_in_per_1k": 1.0, "price_out_per_1k": 0}
    )
    cheap = full.model_copy(update={"price_cached_in_per_1k": 0.1})
    settings = AnnotateSettings(sampling="fixed", max_examples=8)
    _, usage = judge(rows, few_shot, cheap, tmp_path / "c", settings)
    u = usage["ok"]
    assert u["shared_prefix_chars"] > 0.6 * u["prompt_chars"]
    assert 0 < u["cached_prompt_tokens"] < u["prompt_tokens"]
    saved = 0.9 * u["cached_prompt_tokens"] / 1000
    assert u["cost_usd"] == pytest.approx(u["prompt_tokens"] / 1000 - saved, rel=1e-6)
    _, again = judge(rows, few_shot, cheap, tmp_path / "c", settings)
    assert again["ok"]["requests"] == 0 and again["ok"]["work"] == u["work"]  # from the cache, the same bill
    assert full.model_copy(update={"mode": "batch"}).cost(1000, 0) == 0.5  # the batch discount


def test_a_logprob_verdict_counts_by_its_calibrated_probability_and_a_sampled_one_by_its_votes(
    sim_server, sim_truth, tmp_path
):
    """The probe asks every sample as a logprob verdict and fits, per number of verdicts k, a temperature to
    their summed log-odds (gold pairs are correctly oriented): a confident verdict adds more evidence than an
    unsure one, in its direction; the merged verdicts carry the log-odds the decision rule reads; a sampled
    verdict counts as before."""
    from synpref.models.reliability import judge_evidence, judge_room, judge_weight, logit

    _, _, _, gold, _ = sim_truth
    cfg = annotator_cfg(sim_server, "good", verdicts="auto")
    probe, _ = judge(gold.to_pylist(), {}, cfg, tmp_path / "c", repeat_logprobs=True)
    assert probe.num_rows == 3 * gold.num_rows and probe.column("p_slot1").null_count == 0
    stats = judge_reliability(probe)["annotators"]["good"]
    calibration = stats["logprobs"]
    assert calibration["n"] == gold.num_rows and len(calibration["weights"]) == 3
    assert all(w > 0 for w in calibration["weights"]) and judge_room(stats) >= calibration["room"] > 0
    sure, unsure = {"agree": 1, "disagree": 0, "log_odds": [logit(0.95)]}, {"agree": 1, "log_odds": [logit(0.6)]}
    assert judge_evidence(stats, sure) > judge_evidence(stats, {**unsure, "disagree": 0}) > 0
    against = {"agree": 0, "disagree": 1, "log_odds": [logit(0.05)]}
    assert judge_evidence(stats, against) == pytest.approx(-judge_evidence(stats, sure))
    twice = {"agree": 2, "disagree": 0, "log_odds": [logit(0.95)] * 2}
    assert judge_evidence(stats, twice) == pytest.approx(2 * logit(0.95) * calibration["weights"][1])
    assert judge_evidence(stats, {"agree": 2, "disagree": 0}) == judge_weight(stats, "unanimous", "2:2")
    by_id = {}
    for r in probe.to_pylist():
        by_id.setdefault(r["pair_id"], []).append(logit(1 - r["p_slot1"] if r["swapped"] else r["p_slot1"]))
    for m in merge_samples([probe]).to_pylist():
        (v,) = m["annotator_verdicts"]
        assert v["log_odds"] == pytest.approx(by_id[m["pair_id"]])
    once, _ = judge(gold.to_pylist(), {}, cfg, tmp_path / "c")  # outside the sequence: one logprob verdict a pair
    assert once.num_rows == gold.num_rows
    sampled, _ = judge(gold.to_pylist(), {}, annotator_cfg(sim_server, "good", verdicts="sampled"), tmp_path / "c")
    assert all(v["log_odds"] == [] for m in merge_samples([sampled]).to_pylist() for v in m["annotator_verdicts"])


def test_in_sequence_a_logprob_annotator_is_asked_again_only_while_the_pair_is_open(sim_server, sim_truth, tmp_path):
    """With ``repeat_logprobs`` (judging in sequence under the reliability rule) an annotator's next sample is
    another logprob verdict, asked only while ``settled`` leaves the pair open; every request stays in the cache."""
    from synpref.models.reliability import tally_votes

    _, _, _, gold, _ = sim_truth
    rows = gold.to_pylist()

    def settled(pair_id, asked):  # open until the verdicts' summed log-odds reach 1.5 either way
        return "confident" if abs(sum(tally_votes(asked)["log_odds"])) >= 1.5 else None

    cfg = annotator_cfg(sim_server, "good", verdicts="auto")
    samples, usage = judge(rows, {}, cfg, tmp_path / "c", settled=settled, repeat_logprobs=True)
    assert samples.column("p_slot1").null_count == 0  # every sample a logprob verdict
    per_pair = collections.Counter(samples.column("pair_id").to_pylist())
    assert 1 in per_pair.values() and max(per_pair.values()) > 1  # some settle on one, some are asked again
    last = {r["pair_id"]: r for r in samples.to_pylist()}
    assert {r["stopped"] for r in last.values()} <= {"sequence", "all_samples"}
    again, usage2 = judge(rows, {}, cfg, tmp_path / "c", settled=settled, repeat_logprobs=True)
    assert usage2["good"]["requests"] == 0 and again.equals(samples)
