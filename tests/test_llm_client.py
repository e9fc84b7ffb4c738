"""The LLM call layer: backends, cache, budget, retries, errors (against SIMULATED judges over real HTTP)."""

import collections
import http.server
import json
import re
import socket
import threading

import httpx2 as httpx
import pytest

from conftest import annotator_cfg
from synpref.cli import main
from synpref.io.storage import write_parquet
from synpref.llm import breaker
from synpref.llm.annotation import judge, merge_samples
from synpref.llm.breaker import EndpointBreaker
from synpref.llm.client import (
    BACKENDS,
    AnnotatorConfig,
    AnnotatorError,
    BackendError,
    ChatRequest,
    Completion,
    EndpointError,
    EndpointUnreachable,
    Request,
    load_annotators,
    register_backend,
    run_requests,
)
from synpref.settings import AnnotateSettings


def test_faults_end_in_verdicts_or_recorded_abstentions(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    rows = pairs.to_pylist()[:60]
    faulty = annotator_cfg(sim_server, "faulty", timeout_s=1.0, max_retries=5, verdicts="sampled")
    samples, usage = judge(rows, {}, faulty, tmp_path / "c", AnnotateSettings(sampling="fixed"))
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


# --- junk replies, failing endpoints, a torn cache -------------------------------------------------------

_OK = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "fine"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
JUNK = {
    "html": ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
    "not_json": ("application/json", b"this is not json"),
    "empty_choices": ("application/json", json.dumps({**_OK, "choices": []}).encode()),
    "null_content": (
        "application/json",
        json.dumps({**_OK, "choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}).encode(),
    ),
    "blank_content": (
        "application/json",
        json.dumps({**_OK, "choices": [{"index": 0, "message": {"role": "assistant", "content": "  "}}]}).encode(),
    ),
    "empty_object": ("application/json", b"{}"),
    "json_list": ("application/json", b"[1, 2, 3]"),
}


class JunkEndpoint:
    """A real HTTP endpoint that answers a chosen share of prompts with junk (status 200) until ``heal()``."""

    def __init__(self, kind: str, junk_every: int = 3) -> None:
        self.kind, self.junk_every, self.healed, self.calls = kind, junk_every, False, collections.Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                """Quiet: no line per request on stderr."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                outer.calls[prompt] += 1
                junk = not outer.healed and int(prompt.split()[-1]) % outer.junk_every == 0
                if junk and outer.kind == "null_usage":
                    ctype, data = "application/json", json.dumps({**_OK, "usage": None}).encode()
                else:
                    ctype, data = JUNK[outer.kind] if junk else ("application/json", json.dumps(_OK).encode())
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def heal(self) -> None:
        self.healed = True


def _good_endpoint() -> JunkEndpoint:
    endpoint = JunkEndpoint("html")
    endpoint.heal()
    return endpoint


def _requests(n: int) -> list[Request]:
    return [Request(f"k{i}", (("user", f"prompt number {i}"),), 0, 0) for i in range(n)]


def _cfg(url: str, **kw) -> AnnotatorConfig:
    return AnnotatorConfig(name="junky", base_url=url, model="m", max_retries=0, **kw)


@pytest.mark.parametrize("kind", sorted(JUNK))
def test_junk_replies_are_recorded_errors_never_cached_and_a_rerun_asks_only_for_them(tmp_path, kind):
    endpoint = JunkEndpoint(kind)
    cfg = _cfg(endpoint.base_url, max_error_share=0.5)
    responses, usage = run_requests(cfg, _requests(12), tmp_path / "cache")
    failed = {r.key for r in responses if r.status == "error"}
    assert failed == {"k0", "k3", "k6", "k9"}
    assert usage.errors == 4
    assert all(r.text == "fine" for r in responses if r.status == "ok")
    endpoint.heal()
    responses, usage = run_requests(cfg, _requests(12), tmp_path / "cache")
    assert usage.requests == 4
    assert usage.cache_hits == 8
    assert all(r.status == "ok" for r in responses)
    endpoint.server.shutdown()


def test_a_reply_without_token_counts_is_kept_and_counted(tmp_path):
    endpoint = JunkEndpoint("null_usage")
    responses, usage = run_requests(_cfg(endpoint.base_url), _requests(6), tmp_path / "cache")
    assert all(r.status == "ok" for r in responses)
    assert usage.missing_usage == 2
    endpoint.server.shutdown()


def test_an_endpoint_failing_most_requests_fails_the_task_after_caching_what_it_got(tmp_path):
    endpoint = JunkEndpoint("html", junk_every=1)
    with pytest.raises(EndpointError, match="12 of 12 requests failed"):
        run_requests(_cfg(endpoint.base_url), _requests(12), tmp_path / "cache")
    endpoint.heal()
    _, usage = run_requests(_cfg(endpoint.base_url), _requests(12), tmp_path / "cache")
    assert usage.requests == 12
    endpoint.server.shutdown()


def test_an_unreachable_endpoint_fails_instead_of_abstaining_on_everything(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match="cannot reach"):
        run_requests(_cfg(f"http://127.0.0.1:{port}/v1", timeout_s=2), _requests(3), tmp_path / "cache")


def test_a_torn_cache_entry_is_a_miss_and_gets_rewritten(tmp_path):
    endpoint = _good_endpoint()
    cfg = _cfg(endpoint.base_url)
    run_requests(cfg, _requests(3), tmp_path / "cache")
    entries = sorted((tmp_path / "cache").rglob("*.json"))
    entries[0].write_bytes(entries[0].read_bytes()[:7])
    entries[1].write_bytes(b"")
    responses, usage = run_requests(cfg, _requests(3), tmp_path / "cache")
    assert usage.requests == 2
    assert all(r.status == "ok" for r in responses)
    assert json.loads(entries[0].read_text())["text"] == "fine"
    endpoint.server.shutdown()


def test_the_cache_is_namespaced_by_endpoint_and_can_be_refreshed(tmp_path):
    a, b = _good_endpoint(), _good_endpoint()
    run_requests(_cfg(a.base_url), _requests(3), tmp_path / "cache")
    _, usage = run_requests(_cfg(b.base_url), _requests(3), tmp_path / "cache")
    assert usage.requests == 3  # same model name, another endpoint: not reused
    _, usage = run_requests(_cfg(b.base_url, cache_namespace="shared"), _requests(3), tmp_path / "cache")
    assert usage.requests == 3
    _, usage = run_requests(_cfg(a.base_url, cache_namespace="shared"), _requests(3), tmp_path / "cache")
    assert usage.cache_hits == 3  # an explicit namespace is shared across endpoints
    _, usage = run_requests(_cfg(a.base_url, cache="refresh"), _requests(3), tmp_path / "cache")
    assert usage.requests == 3
    a.server.shutdown()
    b.server.shutdown()


# --- annotator config mistakes: one line naming the annotator and the field, exit 2 ---------------------

CONFIG_CASES = {
    "missing_model": ("- name: a\n  base_url: http://h/v1\n", "annotator 'a': field 'model'"),
    "typo_key": ("- name: a\n  base_url: http://h/v1\n  model: m\n  temprature: 0.2\n", "field 'temprature': unknown"),
    "yaml_error": ("- name: a\n  base_url: [http://h\n", "not valid YAML"),
    "wrong_top_key": ("judges:\n  - name: a\n", "got keys ['judges']"),
    "empty_list": ("[]\n", "no annotators"),
    "empty_file": ("", "no annotators"),
    "duplicate_names": (
        "- {name: a, base_url: 'http://h/v1', model: m}\n- {name: a, base_url: 'http://h/v1', model: n}\n",
        "a repeated",
    ),
    "base_url_not_url": ("- {name: a, base_url: 'localhost:8000', model: m}\n", "must be an http(s) URL"),
    "not_a_mapping": ("- just-a-name\n", "annotator #1: expected a mapping"),
    "samples_zero": ("- {name: a, base_url: 'http://h/v1', model: m, samples: 0}\n", "field 'samples'"),
    "blank_model": ("- {name: a, base_url: 'http://h/v1', model: ' '}\n", "field 'model'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_annotator_config_mistakes_are_one_line_naming_the_field(tmp_path, case, capsys):
    text, expected = CONFIG_CASES[case]
    (tmp_path / "annotators.yaml").write_text(text)
    with pytest.raises(AnnotatorError, match=re.escape(expected)):
        load_annotators(tmp_path / "annotators.yaml")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    args = ["annotate", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "out")]
    assert main([*args, "--annotators", str(tmp_path / "annotators.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err


def test_an_annotator_connection_can_set_every_annotator_setting(monkeypatch):
    """Each AnnotatorConfig field but the connection's own (name, URL, key) is read from the connection's extra."""
    from conftest import REPO
    from synpref.llm.client import AnnotatorConfig

    monkeypatch.syspath_prepend(str(REPO / "dags"))
    from synpref_common import ANNOTATOR_EXTRAS

    own = {"name", "base_url", "model", "api_key", "api_key_env"}
    assert set(AnnotatorConfig.model_fields) - own == set(ANNOTATOR_EXTRAS)


# --- the circuit breaker: an endpoint that never answered stops the annotator in seconds -------------------------


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _attempts(message: str) -> int:
    return int(re.search(r"on (\d+) connection attempts in a row", message).group(1))


@pytest.mark.parametrize(
    ("url", "what"),
    [(None, "connection refused"), ("http://synpref-judge.invalid:8000/v1", "the host name does not resolve")],
)
def test_an_endpoint_that_never_answered_trips_the_breaker_within_a_few_attempts(tmp_path, url, what):
    cfg = AnnotatorConfig(name="typo", base_url=url or _refused_url(), model="m")  # default retries and concurrency
    with pytest.raises(EndpointUnreachable) as e:
        run_requests(cfg, _requests(200), tmp_path / "cache")
    message = str(e.value)
    assert "\n" not in message
    assert f"annotator 'typo' cannot reach {cfg.base_url}: {what}" in message
    assert breaker.TRIP_AFTER <= _attempts(message) <= 10


def test_the_cli_fails_on_an_unreachable_judge_in_one_line(sim_truth, tmp_path, capsys):
    d, *_ = sim_truth
    annotators = tmp_path / "annotators.yaml"
    annotators.write_text(f"- {{name: typo, base_url: '{_refused_url()}', model: m}}\n")
    pairs = tmp_path / "pairs.parquet"
    from synpref.simulation.synthetic import generate

    write_parquet(generate(200, seed=3)[0], pairs)
    args = ["annotate", "--pairs", str(pairs), "--gold", str(d / "gold.parquet"), "--annotators", str(annotators)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("synpref")]  # not progress
    assert len(errors) == 1, errors
    assert errors[0].startswith("synpref annotate: error: annotator 'typo' cannot reach")
    assert "connection refused" in errors[0] and "is the server running" in errors[0]


def test_the_breaker_never_trips_once_the_endpoint_has_answered():
    guard = EndpointBreaker("http://judge/v1")
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    for _ in range(breaker.TRIP_AFTER - 1):
        with pytest.raises(httpx.ConnectError):
            guard.guard_failure(refused)
    assert guard.guard_failure(refused).headers[breaker.HEADER] == "refused"
    later = EndpointBreaker("http://judge/v1")
    later.on_answer()  # a dropped connection after answers is transient: the client's retries handle it
    for _ in range(50):
        with pytest.raises(httpx.ConnectError):
            later.guard_failure(refused)
    assert not later.tripped


def test_an_endpoint_answering_429_and_500_on_a_share_of_requests_keeps_its_retries(sim_server, sim_truth, tmp_path):
    rows = sim_truth[1].to_pylist()[:40]
    faulty = annotator_cfg(sim_server, "faulty", timeout_s=1.0, max_retries=5)  # 20% faults: 429, 500, slow, junk
    samples, usage = judge(rows, {}, faulty, tmp_path / "c", AnnotateSettings(sampling="fixed"))
    assert samples.num_rows == 120
    assert collections.Counter(samples.column("reason").to_pylist())["ok"] > 80


@pytest.mark.parametrize("failure", ["refused", "dns"])
def test_batch_mode_fails_in_one_line_on_an_unreachable_endpoint(tmp_path, failure):
    from synpref.llm.batch import submit
    from synpref.llm.client import PendingRequest

    url = _refused_url() if failure == "refused" else "http://synpref-judge.invalid:8000/v1"
    cfg = AnnotatorConfig(name="typo", base_url=url, model="m", mode="batch")
    pending = [PendingRequest("typo", "a" * 64, {"model": "m", "messages": []})]
    with pytest.raises(EndpointUnreachable, match=f"annotator 'typo' cannot reach {re.escape(url)}"):
        submit(cfg, pending, tmp_path / "batches", {})
    assert not (tmp_path / "batches").exists()  # nothing submitted, nothing recorded
