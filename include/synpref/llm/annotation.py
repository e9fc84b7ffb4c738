"""Preference-aware LLM annotation (paper §3.2 step 3, appendix D.3).

Prompt = annotation guideline + up to ``max_examples`` similar human-verified gold pairs (with
attributes and the human verdict) + the target pair, its responses shown as ``Candidate 1`` /
``Candidate 2`` in an order drawn from a seeded RNG per (pair, annotator, sample) and recorded.
Each annotator samples several verdicts (self-consistency) → per-annotator majority → a
cross-model merge. Unparseable or tied verdicts are abstentions, never coin flips.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from typing import Literal

import jinja2
import pyarrow as pa
import pyarrow.compute as pc

from synpref.io.storage import PathLike, read_parquet
from synpref.llm.client import (
    AnnotatorConfig,
    AnnotatorError,
    Budget,
    PendingRequest,
    Request,
    Usage,
    run_requests,
)
from synpref.llm.prompt import block, boundary_marker, marker_line
from synpref.models.reliability import answers_the_same, tally_votes
from synpref.progress import log
from synpref.seeding import seeded_digest, seeded_int
from synpref.settings import AnnotateSettings, MergePolicy

Verdict = Literal["agree", "disagree", "abstain"]
_TOKEN = re.compile(r"\[\[\s*([^\[\]]{0,8}?)\s*\]\]")
_TRAILING_OK = re.compile(r"^[\s.*_`'\")\]]*$")


@cache
def template(name: str) -> str:
    return resources.files("synpref").joinpath("templates", name).read_text()


@cache
def _jinja(name: str) -> jinja2.Template:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    ).from_string(template(name))


def with_samples(settings: AnnotateSettings, annotator: AnnotatorConfig) -> AnnotatorConfig:
    """The annotator with this run's self-consistency samples, when the run sets them."""
    return annotator.model_copy(update={"samples": settings.samples}) if settings.samples else annotator


def task_budget(settings: AnnotateSettings, tasks: int = 1) -> Budget:
    """One task's share of the run's budget (split evenly across annotate tasks)."""
    return Budget(settings.budget_usd / tasks if settings.budget_usd is not None else None)


def order_swapped(pair_id: str, annotator: str, sample: int, seed: int) -> bool:
    """Seeded per (pair, annotator, sample): True → the stored chosen is shown as Candidate 2."""
    return seeded_digest(seed, pair_id, annotator, sample)[0] & 1 == 1


def request_order(pair_id: str, annotator: AnnotatorConfig, first_sample: int, per_request: int, seed: int) -> bool:
    """Whether the request whose first sample is ``first_sample`` shows the stored chosen as Candidate 2: seeded per
    request (``order: random``, and ``auto`` until a probe chose), or the pair's seeded order for its first request
    and the other order for the next, alternating (``order: both``)."""
    if annotator.order != "both":
        return order_swapped(pair_id, annotator.name, first_sample, seed)
    return order_swapped(pair_id, annotator.name, 0, seed) ^ ((first_sample // per_request) % 2 == 1)


ASK_BOTH_ORDERS = {"order": "both", "samples": 2, "choices_per_request": 1}  # each order once
ASK_ONCE = {"order": "random", "samples": 1, "choices_per_request": 1}  # a judge that says the same in either order


def asking(annotator: AnnotatorConfig, judges: dict) -> AnnotatorConfig:
    """An ``order: auto`` annotator as the round's probe chose to ask it (``asking`` in ``judges.json``, written by
    stage 1's merge); any other annotator, or one the probe did not measure, as it is configured."""
    chosen = (judges.get("annotators", {}).get(annotator.name) or {}).get("asking")
    return annotator.model_copy(update=chosen) if annotator.order == "auto" and chosen else annotator


def request_seed(pair_id: str, annotator: str, sample: int, seed: int) -> int:
    return seeded_int("req", seed, pair_id, annotator, sample)


DEFAULT_GUIDELINE = "Prefer the response that is more helpful, correct, honest and harmless."
GOLD_PROVENANCE = ("human", "seed")


def trusted_guideline(pair: dict) -> str:
    """The guideline a judge is given for ``pair``: its own only when a human verified it (gold) or this
    project's attribute step generated it; a guideline that came with the data is never presented as one."""
    trusted = pair.get("provenance") in GOLD_PROVENANCE or pair.get("attributes_status") == "generated"
    return (pair.get("annotation_guideline") or DEFAULT_GUIDELINE) if trusted else DEFAULT_GUIDELINE


def _attributes_text(pair: dict) -> str:
    return "\n".join(
        [
            f"task category: {pair.get('task_category') or 'unknown'}",
            f"objectivity: {pair.get('preference_objectivity') or 'unknown'}",
            f"controversiality: {pair.get('controversiality') or 'unknown'}",
            f"desired attributes: {', '.join(pair.get('desired_attributes') or [])}",
        ]
    )


def _texts(pair: dict) -> list[str]:
    """Every untrusted text of a pair shown in a prompt."""
    return [_attributes_text(pair), pair["chosen"], pair["rejected"], *(m["content"] for m in pair["conversation"])]


def pair_blocks(pair: dict, swapped: bool, marker: str, attributes: bool = True) -> str:
    """A pair as data blocks: attributes, one block per conversation turn, the candidates in the shown order."""
    a, b = (pair["rejected"], pair["chosen"]) if swapped else (pair["chosen"], pair["rejected"])
    parts = [block("attributes", _attributes_text(pair), marker)] if attributes else []
    parts += [block(f"turn {m['role']}", m["content"], marker) for m in pair["conversation"]]
    parts += [block("candidate_1", a, marker), block("candidate_2", b, marker)]
    return "\n".join(parts)


def build_judge_messages(
    pair: dict,
    examples: list[dict],
    swapped: bool,
    max_examples: int,
    example_seed: int = 0,
    preference_aware: bool = True,
) -> list[tuple[str, str]]:
    """System + user messages judging ``pair``; examples first, target pair last. Every text from the data sits
    in a block fenced by this request's boundary marker (``synpref.llm.prompt``). Not ``preference_aware``: no
    examples, the default guideline and no attributes (plain judging)."""
    shown = examples[:max_examples] if preference_aware else []
    marker = boundary_marker([t for p in [*shown, pair] for t in _texts(p)])
    views = []
    for ex in shown:
        ex_swapped = order_swapped(ex["pair_id"], "example", example_seed, 0)
        views.append({"blocks": pair_blocks(ex, ex_swapped, marker), "verdict": 2 if ex_swapped else 1})
    user = _jinja("judge_user.jinja").render(
        marker_line=marker_line(marker),
        guideline=trusted_guideline(pair) if preference_aware else DEFAULT_GUIDELINE,
        examples=views,
        target=pair_blocks(pair, swapped, marker, attributes=preference_aware),
    )
    return [("system", template("judge_system.txt").strip()), ("user", user)]


def parse_verdict(text: str | None) -> tuple[int | None, str]:
    """Judge output → (1 | 2 | None, reason). The LAST ``[[n]]`` token decides; it must end the text."""
    if not text or not text.strip():
        return None, "empty"
    matches = list(_TOKEN.finditer(text))
    if not matches:
        return None, "no_verdict"
    last = matches[-1]
    if last.group(1) not in ("1", "2"):
        return None, f"invalid_token:{last.group(1)[:8]}"
    if not _TRAILING_OK.match(text[last.end() :]):
        return None, "verdict_not_at_end"
    final_line = text[: last.start()].rsplit("\n", 1)[-1]
    if any(m.group(1) in ("1", "2") and m.group(1) != last.group(1) for m in _TOKEN.finditer(final_line)):
        return None, "ambiguous"
    return int(last.group(1)), "ok"


def slot_to_verdict(slot: int | None, swapped: bool) -> Verdict:
    """Map a slot verdict back through the recorded order: agree = the stored chosen is better."""
    if slot is None:
        return "abstain"
    chosen_slot = 2 if swapped else 1
    return "agree" if slot == chosen_slot else "disagree"


SAMPLE_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("annotator", pa.string()),
        ("sample", pa.int32()),
        ("swapped", pa.bool_()),
        ("slot", pa.int8()),
        ("verdict", pa.string()),
        ("reason", pa.string()),
        ("status", pa.string()),
        ("p_slot1", pa.float64()),  # P(Candidate 1) from the verdict token's logprobs; null for a sampled verdict
        ("stopped", pa.string()),  # on an annotator's last sample of a pair: why it asked no more (STOP_REASONS)
        ("settled", pa.string()),  # judging in sequence, on a pair's last sample overall: why no annotator followed
        ("choice", pa.int8()),  # which of its request's choices (``n``) this sample is: 0 = a request of its own
    ]
)
STOP_REASONS = {
    "logprobs": "one request: the verdict token's probability is the verdict",
    "settled": "the remaining samples could not change this annotator's majority",
    "all_samples": "every sample was asked",
    "sequence": "judging in sequence settled the pair (its ``settled`` says why) before every sample was asked",
}


def slot_from_logprobs(logprobs: dict[str, float] | None) -> tuple[int | None, float | None]:
    """(slot, P(Candidate 1)) from the verdict token's log-probabilities of "1" and "2"; (None, None) without."""
    if not logprobs:
        return None, None
    p1 = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, logprobs["2"] - logprobs["1"]))))
    return (1 if p1 > 0.5 else 2 if p1 < 0.5 else None), p1


def _sample_row(pid: str, annotator: str, s: int, swapped: bool, resp, choice: int = 0) -> dict:
    """One asked sample, the reply's ``choice``: its slot and verdict (from the logprobs when the reply has them,
    else from the text)."""
    if resp.status in ("error", "budget"):
        slot, reason, p1 = None, resp.error or "budget", None
    else:
        slot, reason = parse_verdict(resp.texts()[choice])
        logprobs = resp.verdict_logprobs if choice == 0 else None
        lp_slot, p1 = slot_from_logprobs(logprobs) if slot is not None else (None, None)
        if p1 is not None:
            slot, reason = lp_slot, "ok" if lp_slot is not None else "logprobs_tied"
    return {
        "pair_id": pid,
        "annotator": annotator,
        "sample": s,
        "swapped": swapped,
        "slot": slot,
        "verdict": slot_to_verdict(slot, swapped),
        "reason": reason,
        "status": resp.status,
        "p_slot1": p1,
        "stopped": None,
        "settled": None,
        "choice": choice,
    }


def requests_asked(samples: pa.Table) -> int:
    """How many requests a sample table's rows took (a request's later choices are not requests of their own)."""
    if "choice" not in samples.column_names:
        return samples.num_rows  # written before several choices per request: one request a row
    later_choices = pc.sum(pc.fill_null(pc.greater(samples["choice"], 0), False)).as_py() or 0  # None when empty
    return samples.num_rows - later_choices


def request_spans(missing: list[int], per_request: int, all_at_once: bool) -> list[list[int]]:
    """The sample indices to ask next, grouped into requests of at most ``per_request`` choices: the first group
    only (a wave of adaptive sampling), or all of them (fixed sampling)."""
    spans = [missing[i : i + per_request] for i in range(0, len(missing), per_request)]
    return spans if all_at_once else spans[:1]


Settled = Callable[[str, dict, list[str]], str | None]
PairSettled = Callable[[str, list[dict]], str | None]


def _stop_reason(rows: list[dict], samples: int, adaptive: bool, repeat_logprobs: bool) -> str | None:
    """Why a pair needs no more samples from this annotator (None: ask again)."""
    last = rows[-1]
    logprob_verdict = last["p_slot1"] is not None and last["slot"] is not None
    if logprob_verdict and not repeat_logprobs:
        return "logprobs"
    if len(rows) >= samples:
        return "all_samples"
    if logprob_verdict:
        return None  # repeated logprob verdicts: judging in sequence (or the probe) decides
    agree = sum(r["verdict"] == "agree" for r in rows)
    disagree = sum(r["verdict"] == "disagree" for r in rows)
    return "settled" if adaptive and abs(agree - disagree) > samples - len(rows) else None


def judge(
    pairs: list[dict],
    examples: dict[str, list[dict]],
    annotator: AnnotatorConfig,
    cache_dir: PathLike | None,
    settings: AnnotateSettings = AnnotateSettings(),
    budget: Budget | None = None,
    pending: list[PendingRequest] | None = None,
    settled: PairSettled | None = None,
    repeat_logprobs: bool = False,
) -> tuple[pa.Table, dict]:
    """One annotator's verdicts on ``pairs``: one row per sample asked, and usage. A batch-mode annotator's
    requests missing from the cache go to ``pending`` and judging stops at that wave (the table is then partial).
    ``settled(pair_id, this annotator's samples so far)``: why judging in sequence needs no further sample of the
    pair (None: go on), asked after each wave of a pair this annotator would ask again.

    Samples are asked in waves (sample 0 of every pair, then sample 1 of the pairs still open, ...), up to
    ``choices_per_request`` samples in one request (OpenAI's ``n``; the choices share the candidates' order): with
    ``sampling=adaptive`` a pair stops as soon as the remaining samples cannot change the annotator's majority,
    with ``fixed`` every sample is asked at once; an endpoint that answers fewer choices than asked is asked for
    the rest in the next wave. With ``verdicts`` logprobs/auto the first request asks for the verdict token's
    log-probabilities (one choice), and a reply that has them is the verdict (one request) — unless
    ``repeat_logprobs`` (judging in sequence under a rule that weighs logprob verdicts, where ``settled`` decides,
    and the gold probe, which asks every sample to measure repeated verdicts): then the pair's later samples are
    logprob verdicts too; a reply without logprobs falls back to sampling. Every request keeps its seeded identity
    (pair, first sample, kind, choices), so a re-run asks exactly the same requests and finds them in the cache."""
    budget = budget or task_budget(settings)
    adaptive = settings.sampling == "adaptive"
    asked: dict[str, list[dict]] = {p["pair_id"]: [] for p in pairs}
    usage_total = Usage()
    open_pairs = list(pairs)
    first_prompt: dict[str, str] = {}
    for wave in range(annotator.samples):  # every wave adds at least one sample to every open pair
        if not open_pairs:
            break
        groups = _wave_requests(open_pairs, asked, examples, annotator, settings)
        waiting = len(pending) if pending is not None else 0
        answered = []
        for with_logprobs, (requests, meta) in groups.items():
            if not requests:
                continue
            responses, usage = run_requests(
                annotator, requests, cache_dir, budget, logprobs=with_logprobs, pending=pending
            )
            usage_total.add(usage)
            _count_shared_prefixes(requests, meta, first_prompt, usage_total)
            answered += list(zip(meta, responses))
        if pending is not None and len(pending) > waiting:
            break  # the next wave depends on answers a batch has yet to give
        if wave == 0 and annotator.verdicts == "logprobs" and _no_logprobs([r for _, r in answered]):
            raise AnnotatorError(
                f"annotator '{annotator.name}' has verdicts: logprobs but its endpoint returned no logprobs; "
                "use verdicts: auto (falls back to sampling) or sampled"
            )
        for (pid, span, swapped), resp in answered:
            for choice, s in enumerate(span[: len(resp.texts())]):
                asked[pid].append(_sample_row(pid, annotator.name, s, swapped, resp, choice))
        open_pairs = _still_open(open_pairs, asked, annotator.samples, adaptive, repeat_logprobs, settled)
    rows = [r for p in pairs for r in asked[p["pair_id"]]]
    usage = {annotator.name: {**usage_total.as_dict(), "work": usage_total.work_dict()}}
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), usage


def _wave_requests(
    open_pairs: list[dict],
    asked: dict[str, list[dict]],
    examples: dict[str, list[dict]],
    annotator: AnnotatorConfig,
    settings: AnnotateSettings,
) -> dict[bool, tuple[list[Request], list[tuple]]]:
    """A wave's requests (and their (pair id, samples, swapped)), with and without logprobs: every sample of an
    open pair not asked yet, ``choices_per_request`` a request (one with logprobs); adaptive sampling and logprob
    verdicts ask one request a pair per wave."""
    logprobs = annotator.verdicts in ("logprobs", "auto")
    adaptive = settings.sampling == "adaptive"
    groups: dict[bool, tuple[list[Request], list[tuple]]] = {True: ([], []), False: ([], [])}
    for pair in open_pairs:
        pid, exs, rows = pair["pair_id"], examples.get(pair["pair_id"], []), asked[pair["pair_id"]]
        with_logprobs = logprobs and (not rows or rows[0]["p_slot1"] is not None)
        requests, meta = groups[with_logprobs]
        missing = sorted(set(range(annotator.samples)) - {r["sample"] for r in rows})
        per_request = 1 if with_logprobs else annotator.choices_per_request
        for span in request_spans(missing, per_request, not (adaptive or logprobs)):
            swapped = request_order(pid, annotator, span[0], per_request, settings.seed)
            aware = settings.preference_aware
            msgs = tuple(build_judge_messages(pair, exs, swapped, settings.max_examples, settings.seed, aware))
            seed = request_seed(pid, annotator.name, span[0], settings.seed)
            requests.append(Request(f"{pid}:{span[0]}", msgs, span[0], seed, len(span)))
            meta.append((pid, span, swapped))
    return groups


def _still_open(
    open_pairs: list[dict],
    asked: dict[str, list[dict]],
    samples: int,
    adaptive: bool,
    repeat_logprobs: bool,
    settled: PairSettled | None,
) -> list[dict]:
    """The pairs that get another wave; a stopped pair's last sample records why it stopped."""
    still_open = []
    for pair in open_pairs:
        rows = asked[pair["pair_id"]]
        reason = _stop_reason(rows, samples, adaptive, repeat_logprobs)
        if reason is None and settled is not None and settled(pair["pair_id"], rows):
            reason = "sequence"
        if reason is None:
            still_open.append(pair)
        else:
            rows[-1]["stopped"] = reason
    return still_open


def probe_judge(
    probe: list[dict],
    examples: dict[str, list[dict]],
    annotator: AnnotatorConfig,
    cache_dir: PathLike | None,
    settings: AnnotateSettings = AnnotateSettings(),
    budget: Budget | None = None,
) -> tuple[AnnotatorConfig, dict | None, pa.Table, dict]:
    """One annotator on a blind probe of gold pairs: every sample asked (logprob verdicts repeated too, to measure
    them). An ``order: auto`` annotator that answers the same every time (``answers_the_same``: a judge at
    temperature 0, a reward model) is probed again asking each order once (``ASK_BOTH_ORDERS``); if it says the same
    in either order too (an order-invariant judge), one request a pair says it all (``ASK_ONCE``, answered from the
    cache). The probe kept is the one asked as the annotator will be asked from now on, so that it measures the
    verdicts it will give. → (the annotator as it is asked from now on, what the probe chose or None, its samples,
    usage of every probe)."""

    def asked(a: AnnotatorConfig) -> tuple[pa.Table, dict]:
        return judge(probe, examples, a, cache_dir, settings, budget, repeat_logprobs=True)

    samples, usage = asked(annotator)
    if annotator.order != "auto" or not answers_the_same(samples):
        return annotator, None, samples, usage
    chosen = ASK_BOTH_ORDERS
    samples, more = asked(annotator.model_copy(update=chosen))
    usage = _added(usage, more)
    if answers_the_same(samples, "orders_agree"):
        chosen = ASK_ONCE
        samples, more = asked(annotator.model_copy(update=chosen))
        usage = _added(usage, more)
    what = "each order once" if chosen is ASK_BOTH_ORDERS else "once (it says the same in either order)"
    log.info("annotator %s answers the same every time on the probe: it is asked %s", annotator.name, what)
    return annotator.model_copy(update=chosen), chosen, samples, usage


def _added(first: dict, second: dict) -> dict:
    """Two usage summaries of one annotator (``judge``'s) as one."""
    (name, a), b = next(iter(first.items())), next(iter(second.values()))
    total = {k: a[k] + b[k] for k, v in a.items() if isinstance(v, (int, float)) and k in b}
    return {name: {**b, **total, "work": {k: a["work"][k] + b["work"][k] for k in a["work"]}}}


def _count_shared_prefixes(requests: list[Request], meta: list[tuple], first: dict[str, str], usage: Usage) -> None:
    """Prompt characters, and how many of them each prompt shares as a prefix with the previous prompt or the pair's
    first one (what a provider's prefix cache can serve: the instructions, the guideline and, for a pair's later
    samples, its examples and conversation)."""
    previous = ""
    for request, (pid, _, _) in zip(requests, meta):
        text = "\n".join(content for _, content in request.messages)
        shared = max(
            len(os.path.commonprefix([text, previous])), len(os.path.commonprefix([text, first.get(pid, "")]))
        )
        usage.prompt_chars += len(text)
        usage.shared_prefix_chars += shared
        first.setdefault(pid, text)
        previous = text


def judge_in_sequence(
    pairs: list[dict],
    examples: dict[str, list[dict]],
    annotators: list[AnnotatorConfig],
    cache_dir: PathLike | None,
    settings: AnnotateSettings,
    budget: Budget,
    settled: Settled | None = None,
    pending: list[PendingRequest] | None = None,
    repeat_logprobs: bool = False,
) -> tuple[dict[str, pa.Table], dict]:
    """Every annotator's samples (name → table) and usage, the annotators asked one after another in the given
    order. ``settled(pair_id, the verdicts so far, annotators still to be asked)`` says why a pair needs no
    further request (None: go on); it is asked after every sample, so a pair can stop on one annotator's first
    vote, and is recorded in the ``settled`` column of the pair's last sample. Without ``settled`` every annotator
    judges every pair. Batch-mode requests missing from the cache go to ``pending`` (and, in sequence, no later
    annotator is asked): the tables are then partial, not to be written. ``repeat_logprobs``: see ``judge``."""
    tables: dict[str, pa.Table] = {}
    usage: dict = {}
    reasons: dict[str, str] = {}
    open_pairs = list(pairs)
    before: dict[str, list[dict]] = {}  # pair → the verdicts of the annotators asked so far
    for i, annotator in enumerate(annotators):
        remaining = [a.name for a in annotators[i + 1 :]]

        def so_far(pid: str, rows: list[dict], name: str = annotator.name) -> dict:
            return {"annotator_verdicts": [*before.get(pid, []), _tally(name, rows)]}

        def early(pid: str, rows: list[dict], name: str = annotator.name, rest: list[str] = remaining) -> str | None:
            return settled(pid, so_far(pid, rows), [name, *rest])  # this annotator may still be asked again

        waiting = len(pending) if pending is not None else 0
        table, u = judge(
            open_pairs,
            examples,
            annotator,
            cache_dir,
            settings,
            budget,
            pending,
            early if settled else None,
            repeat_logprobs,
        )
        tables[annotator.name] = table
        usage.update(u)
        if settled is None or not open_pairs:
            continue
        if pending is not None and len(pending) > waiting:
            break  # who is asked next depends on answers a batch has yet to give
        rows_of: dict[str, list[dict]] = defaultdict(list)
        for r in table.to_pylist():
            rows_of[r["pair_id"]].append(r)
        for pair in open_pairs:
            pid, rows = pair["pair_id"], rows_of[pair["pair_id"]]
            if rows and rows[-1]["stopped"] == "sequence":
                reasons[pid] = early(pid, rows)
            elif remaining and (reason := settled(pid, so_far(pid, rows), remaining)) is not None:
                reasons[pid] = reason
            else:
                before[pid] = so_far(pid, rows)["annotator_verdicts"]
        open_pairs = [p for p in open_pairs if p["pair_id"] not in reasons]
    if settled is not None:
        tables = _mark_settled(tables, reasons)
    return tables, usage


def _tally(annotator: str, rows: list[dict]) -> dict:
    """One annotator's votes on one pair (and its logprob verdicts' log-odds), as in ``annotator_verdicts``."""
    return {"annotator": annotator, **tally_votes(rows)}


def _mark_settled(tables: dict[str, pa.Table], reasons: dict[str, str]) -> dict[str, pa.Table]:
    """The ``settled`` reason on each pair's last sample of the last annotator that judged it."""
    last: dict[str, tuple[str, int]] = {}
    for name, t in tables.items():
        for i, pid in enumerate(t.column("pair_id").to_pylist()):
            last[pid] = (name, i)
    out = {}
    for name, t in tables.items():
        column = [None] * t.num_rows
        for pid, (n, i) in last.items():
            if n == name:
                column[i] = reasons.get(pid, "all_annotators")
        out[name] = t.set_column(t.schema.get_field_index("settled"), "settled", pa.array(column, pa.string()))
    return out


def _no_logprobs(responses: list) -> bool:
    answered = [r for r in responses if r.status == "ok"]
    return bool(answered) and all(r.verdict_logprobs is None for r in answered)


def majority(agree: int, disagree: int) -> Verdict:
    if agree > disagree:
        return "agree"
    if disagree > agree:
        return "disagree"
    return "abstain"


def annotator_weight(accuracy: float | None) -> float:
    """Log-odds weight of an annotator from its accuracy on gold: 1.0 when unknown, 0 at or below chance."""
    if accuracy is None:
        return 1.0
    acc = min(max(accuracy, 1e-3), 1 - 1e-3)
    return max(0.0, math.log(acc / (1 - acc)))


def merge_verdicts(
    per_annotator: dict[str, Verdict], policy: MergePolicy = "majority", accuracy: dict[str, float] | None = None
) -> Verdict:
    """Cross-model merge of per-annotator verdicts."""
    votes = [v for v in per_annotator.values() if v != "abstain"]
    if policy == "unanimous":
        if per_annotator and len(votes) == len(per_annotator) and len(set(votes)) == 1:
            return votes[0]
        return "abstain"
    if policy == "weighted":
        acc = accuracy or {}
        score = sum(
            (1 if v == "agree" else -1) * annotator_weight(acc.get(n))
            for n, v in per_annotator.items()
            if v != "abstain"
        )
        return "agree" if score > 1e-9 else "disagree" if score < -1e-9 else "abstain"
    c = Counter(votes)
    return majority(c["agree"], c["disagree"])


MERGED_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("verdict", pa.string()),
        ("status", pa.string()),
        ("votes_agree", pa.int32()),
        ("votes_disagree", pa.int32()),
        ("votes_abstain", pa.int32()),
        ("agreement", pa.float32()),
        ("settled", pa.string()),  # judging in sequence: why no further annotator was asked (null otherwise)
        (
            "annotator_verdicts",
            pa.list_(
                pa.struct(
                    [
                        ("annotator", pa.string()),
                        ("verdict", pa.string()),
                        ("agree", pa.int32()),
                        ("disagree", pa.int32()),
                        ("abstain", pa.int32()),
                        ("asked", pa.int32()),  # samples asked of this annotator
                        ("stopped", pa.string()),  # why it stopped (STOP_REASONS); null for older sample tables
                        ("log_odds", pa.list_(pa.float64())),  # logprob verdicts: logit P(stored chosen is better)
                    ]
                )
            ),
        ),
    ]
)


def merge_samples(
    samples: Iterable[pa.Table],
    policy: MergePolicy = "majority",
    accuracy: dict[str, float] | None = None,
    pair_ids: list[str] | None = None,
) -> pa.Table:
    """Per-pair merged verdicts from the sample tables of all annotators (sorted by pair_id)."""
    rows_of: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))  # pair → annotator → samples
    statuses: dict[str, Counter] = defaultdict(Counter)
    stopped: dict[tuple[str, str], str] = {}
    settled: dict[str, str] = {}
    for t in samples:
        optional = [c for c in ("stopped", "settled", "p_slot1") if c in t.column_names]  # absent from older tables
        for r in t.select(["pair_id", "annotator", "sample", "swapped", "verdict", "status", *optional]).to_pylist():
            rows_of[r["pair_id"]][r["annotator"]].append(r)
            statuses[r["pair_id"]][r["status"]] += 1
            if r.get("stopped"):
                stopped[(r["pair_id"], r["annotator"])] = r["stopped"]
            if r.get("settled"):
                settled[r["pair_id"]] = r["settled"]
    rows = []
    for pid in sorted(set(rows_of) | set(pair_ids or [])):
        tallies = {a: tally_votes(samples_of) for a, samples_of in sorted(rows_of[pid].items())}
        per = {a: majority(t["agree"], t["disagree"]) for a, t in tallies.items()}
        verdict = merge_verdicts(per, policy, accuracy)
        st = statuses[pid]
        total = sum(st.values())
        if total == 0:
            status = "not_annotated"
        elif st["budget"] == total:
            status = "not_annotated_budget"
        elif st["error"] + st["budget"] == total:
            status = "abstain_error"
        else:
            status = "annotated"
        voters = [v for v in per.values() if v != "abstain"]
        agreement = (sum(v == verdict for v in voters) / len(voters)) if voters and verdict != "abstain" else 0.0
        rows.append(
            {
                "pair_id": pid,
                "verdict": verdict,
                "status": status,
                **{f"votes_{v}": sum(t[v] for t in tallies.values()) for v in ("agree", "disagree", "abstain")},
                "agreement": agreement,
                "settled": settled.get(pid),
                "annotator_verdicts": [
                    {
                        "annotator": a,
                        "verdict": per[a],
                        **t,  # agree, disagree, abstain, log_odds
                        "asked": t["agree"] + t["disagree"] + t["abstain"],
                        "stopped": stopped.get((pid, a)),
                    }
                    for a, t in tallies.items()
                ],
            }
        )
    return pa.Table.from_pylist(rows, schema=MERGED_SCHEMA)


def annotator_stats(samples: pa.Table, truth_agree: dict[str, bool] | None = None) -> dict[str, dict]:
    """Per annotator: slot-1 rate, position-flip rate (content verdict changes when the order flips),
    abstention rate, and accuracy of its majority verdict when ``truth_agree``
    (pair_id → stored label correct) is given."""
    by: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in samples.to_pylist():
        by[r["annotator"]][r["pair_id"]].append(r)
    out = {}
    for name, pairs in sorted(by.items()):
        all_rows = [r for rows in pairs.values() for r in rows]
        decided = [r for r in all_rows if r["slot"] is not None]
        both, flips = 0, 0
        for rows in pairs.values():
            seen = {(r["swapped"], r["verdict"]) for r in rows if r["slot"] is not None}
            orders = {s for s, _ in seen}
            if len(orders) == 2:
                both += 1
                flips += len({v for _, v in seen}) > 1
        slot1 = sum(r["slot"] == 1 for r in decided) / len(decided) if decided else None
        stats = {
            "samples": len(all_rows),
            "abstain_rate": 1 - len(decided) / len(all_rows) if all_rows else None,
            "slot1_rate": slot1,
            "position_bias_estimate": (2 * slot1 - 1) if slot1 is not None else None,
            "position_flip_rate": flips / both if both else None,
        }
        if truth_agree:
            graded = [
                (
                    majority(
                        sum(r["verdict"] == "agree" for r in rows), sum(r["verdict"] == "disagree" for r in rows)
                    ),
                    truth_agree[pid],
                )
                for pid, rows in pairs.items()
                if pid in truth_agree
            ]
            decided_g = [(v, t) for v, t in graded if v != "abstain"]
            stats["accuracy"] = sum((v == "agree") == t for v, t in decided_g) / len(decided_g) if decided_g else None
            stats["sample_accuracy"] = sum(
                (r["verdict"] == "agree") == truth_agree[r["pair_id"]] for r in decided if r["pair_id"] in truth_agree
            ) / max(1, sum(r["pair_id"] in truth_agree for r in decided))
        out[name] = stats
    return out


def few_shot_examples(
    pairs: list[dict], gold: list[dict], max_examples: int, cache_uri: PathLike | None = None
) -> dict[str, list[dict]]:
    """The most similar gold pairs of each target pair, by (conversation, attributes) embeddings."""
    from synpref.models.embedding import embed_rows, nearest_examples

    if not gold or max_examples <= 0:
        return {p["pair_id"]: [] for p in pairs}
    gold_vecs = embed_rows(gold, cache_uri)
    return nearest_examples(embed_rows(pairs), [p["pair_id"] for p in pairs], gold, gold_vecs, max_examples)


def examples_table(examples: dict[str, list[dict]]) -> pa.Table:
    """Few-shot examples as stored: each target pair's gold example ids, in rank order."""
    ids = [[e["pair_id"] for e in exs] for exs in examples.values()]
    return pa.table(
        {"pair_id": pa.array(list(examples), pa.string()), "examples": pa.array(ids, pa.list_(pa.string()))}
    )


def read_examples(uri: PathLike, gold: list[dict]) -> dict[str, list[dict]]:
    """Stored few-shot examples back as gold rows (see ``examples_table``)."""
    by_id = {g["pair_id"]: g for g in gold}
    rows = read_parquet(uri).to_pylist()
    return {r["pair_id"]: [by_id[e] for e in r["examples"] if e in by_id] for r in rows}


def annotate_pairs(
    pairs: list[dict],
    gold: list[dict],
    annotators: list[AnnotatorConfig],
    cache_dir: PathLike | None,
    settings: AnnotateSettings = AnnotateSettings(),
    accuracy: dict[str, float] | None = None,
) -> tuple[pa.Table, pa.Table, dict]:
    """The whole layer in one call: examples → every annotator's samples → merged verdicts, usage."""
    examples = few_shot_examples(pairs, gold, settings.max_examples)
    tables, usage = [], {}
    for a in annotators:
        t, u = judge(
            pairs, examples, with_samples(settings, a), cache_dir, settings, task_budget(settings, len(annotators))
        )
        tables.append(t)
        usage.update(u)
    samples = pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()
    merged = merge_samples(tables, settings.merge_policy, accuracy, [p["pair_id"] for p in pairs])
    return merged, samples, usage


def status_counts(merged: pa.Table) -> dict[str, int]:
    c = Counter(merged.column("status").to_pylist())
    c.update(f"verdict_{v}" for v in merged.column("verdict").to_pylist())
    return dict(sorted(c.items()))
