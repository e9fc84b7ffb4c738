"""The LLM call layer: backends, cache, budget, retries, errors (against SIMULATED judges over real HTTP)."""

import collections

import pytest

from conftest import annotator_cfg
from synpref.annotation import judge, merge_samples
from synpref.llm_client import (
    BACKENDS,
    AnnotatorConfig,
    AnnotatorError,
    BackendError,
    ChatRequest,
    Completion,
    register_backend,
)
from synpref.settings import AnnotateSettings


def test_faults_end_in_verdicts_or_recorded_abstentions(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()[:60]
    samples, usage = judge(rows, {}, annotator_cfg(sim_server, "faulty", timeout_s=1.0, max_retries=5), tmp_path / "c")
    merged = merge_samples([samples], pair_ids=[r["pair_id"] for r in rows])
    assert merged.num_rows == 60
    assert samples.num_rows == 180
    reasons = collections.Counter(samples.column("reason").to_pylist())
    assert reasons["ok"] > 100
    assert set(merged.column("status").to_pylist()) <= {"annotated", "abstain_error"}
    assert reasons["verdict_not_at_end"] + reasons["no_verdict"] > 0  # malformed / buried answers abstain


def test_budget_cap_stops_early_and_says_so(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()
    samples, usage = judge(
        rows, {}, annotator_cfg(sim_server, "good", samples=1), tmp_path / "c", AnnotateSettings(budget_usd=0.01)
    )
    merged = merge_samples([samples])
    statuses = collections.Counter(merged.column("status").to_pylist())
    assert statuses["not_annotated_budget"] > 0
    assert usage["good"]["budget_skipped"] > 0
    assert sum(statuses.values()) == len(rows)


def test_misconfigured_endpoint_names_the_annotator_not_the_key(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    bad = AnnotatorConfig(name="judge_x", base_url=sim_server.base_url, model="good", api_key="sk-WRONG-SECRET")
    with pytest.raises(AnnotatorError) as e:
        judge(pairs.to_pylist()[:2], {}, bad, None)
    assert "judge_x" in str(e.value)
    assert "sk-WRONG-SECRET" not in str(e.value)
    assert "sk-WRONG" not in repr(bad)
    assert "api_key" not in bad.model_dump()


class EchoBackend:
    """A toy judge backend (one class): always prefers Candidate 1; fails once per request when asked to."""

    calls = 0

    def __init__(self, cfg: AnnotatorConfig) -> None:
        self.flaky = cfg.model == "flaky"
        self.seen: set = set()

    async def complete(self, request: ChatRequest) -> Completion:
        EchoBackend.calls += 1
        if self.flaky and request.seed not in self.seen:
            self.seen.add(request.seed)
            raise BackendError("Overloaded", "toy backend overloaded", retryable=True)
        return Completion("Candidate 1 is better.\n[[1]]", prompt_tokens=100, completion_tokens=10)

    async def aclose(self) -> None:
        return None


@pytest.fixture()
def echo():
    register_backend("echo", EchoBackend)
    EchoBackend.calls = 0
    yield
    BACKENDS.pop("echo")


def _echo(model: str = "toy", **kw) -> AnnotatorConfig:
    return AnnotatorConfig(name=model, base_url="local://", model=model, backend="echo", samples=2, **kw)


def test_a_new_backend_is_one_class_and_gets_cache_and_accounting(echo, sim_truth, tmp_path):
    rows = sim_truth[1].to_pylist()[:5]
    cfg = _echo(price_in_per_1k=1.0)
    samples, usage = judge(rows, {}, cfg, tmp_path / "cache")
    assert EchoBackend.calls == 10
    assert set(samples.column("slot").to_pylist()) == {1}
    assert usage["toy"]["work"]["cost_usd"] == pytest.approx(1.0)
    _, again = judge(rows, {}, cfg, tmp_path / "cache")
    assert EchoBackend.calls == 10  # the cache wraps every backend
    assert again["toy"]["cache_hits"] == 10


def test_the_wrapper_retries_retryable_backend_errors(echo, sim_truth, tmp_path):
    rows = sim_truth[1].to_pylist()[:3]
    samples, usage = judge(rows, {}, _echo("flaky", max_retries=2), None)
    assert EchoBackend.calls == 12  # each of the 6 requests failed once, then answered
    assert set(samples.column("status").to_pylist()) == {"ok"}


def test_the_budget_wraps_every_backend(echo, sim_truth, tmp_path):
    rows = sim_truth[1].to_pylist()[:20]
    samples, usage = judge(
        rows, {}, _echo(price_in_per_1k=1.0, max_concurrency=1), None, AnnotateSettings(budget_usd=0.5)
    )
    assert usage["toy"]["budget_skipped"] > 0
    assert "budget" in samples.column("reason").to_pylist()


def test_an_unknown_backend_names_the_annotator():
    with pytest.raises(AnnotatorError, match="unknown backend 'nope'"):
        judge([{"pair_id": "x", "conversation": [], "chosen": "a", "rejected": "b"}], {}, _echo_unknown(), None)


def _echo_unknown() -> AnnotatorConfig:
    return AnnotatorConfig(name="n", base_url="local://", model="m", backend="nope", samples=1)


def test_the_default_backend_is_not_written_into_records():
    assert "backend" not in AnnotatorConfig(name="n", base_url="http://x", model="m").model_dump()
