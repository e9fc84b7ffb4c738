"""Settings declared once: a typed field (default, bounds, title, section, description) per setting.

The library's configs (``PrepareConfig``, ``AnnotateSettings``, ``Stage1Config``, ``RMConfig``,
``Stage2Config``, ...) are pydantic models, all declared in this module. It is a leaf: declarations
only, no behaviour and no import from the rest of the library (so DAG files use it at parse time);
what a setting does lives in the module that owns the step. User-facing fields are declared with
``setting(...)``; from them the DAGs derive their ``Param``s (``dags/synpref_common.py``), the CLI
derives its flags (``synpref.cli``) and both build the config back with ``from_flat``. A nested
config (``Stage1Config.rm``) is flattened under its ``prefix`` (``rm_mode``, ``rm_lr``, ...). Fields
without a title are internal: they keep their default and are not exposed. Where two settings
constrain each other, a validator makes the effective value the one recorded.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

RMMode = Literal["full", "frozen"]
MergePolicy = Literal["majority", "unanimous", "weighted"]
SamplingPolicy = Literal["adaptive", "fixed"]
RetrievalPolicy = Literal["adaptive", "random", "uncertainty"]
RetrievedTo = Literal["judges", "silver", "humans"]
ReviewOrder = Literal["priority", "random"]
RecyclePolicy = Literal["rule_default", "positive_evidence", "both_rms_reject", "all_discarded"]
# the decision rules a run can select: each name is the ``kind`` of one ``stage2.consistency.RuleBase`` class
DecisionRuleName = Literal["reliability", "paper"]
NGRAM = 13  # decontamination n-gram length (paper appendix C)
HIST_BINS = 20  # p histograms of a stage-2 shard summary (report figures): 20 bins over [0, 1]
# The device a worker trains, scores and embeds on: a property of the worker (its environment), not of a
# run, since a run's params cannot know which Celery worker picks a task. auto = CUDA if visible, else CPU.
DEVICE_ENV = "SYNPREF_DEVICE"
DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+"
# data-parallel training processes of a full RM (torchrun, one per GPU); default: every visible GPU with device
# auto/cuda, else 1. A number > 1 on a CPU worker runs that many CPU processes (gloo): how the tests check it.
TRAIN_PROCESSES_ENV = "SYNPREF_TRAIN_PROCESSES"
# tokens (padding included) per RM scoring forward pass, batches sorted by length; on CPUs small batches stay in
# cache (measured here at ~180 and ~720 tokens: 1,024-2,048 best, 16,384 1.5-2x slower), GPUs want large ones
SCORE_TOKEN_BUDGET = {"cpu": 2048, "cuda": 131072}

SECTION_DATA = "Data"
SECTION_RETRIEVAL = "Adaptive retrieval"
SECTION_ANNOTATION = "LLM annotation"
SECTION_RM = "Reward models"
SECTION_CONSISTENCY = "Consistency filtering"
# the trigger form (Airflow 3.3) shows every named section collapsed: the secondary thresholds of the reliability
# rule have their own, so that "Consistency filtering" holds only what a run usually sets
SECTION_ADVANCED = "Advanced: decision thresholds"
SECTION_DOWNSTREAM = "Downstream RM check"


def setting(
    default: Any, *, title: str, section: str, description: str = "", param: str | None = None, **constraints: Any
) -> Any:
    """A user-facing setting; ``param`` renames it in the DAG params / CLI flags (e.g. ``learning_rate`` → ``lr``)."""
    extra: dict[str, Any] = {"section": section}
    if param:
        extra["param"] = param
    return Field(default, title=title, description=description or None, json_schema_extra=extra, **constraints)


def nested(default_factory: Any, *, prefix: str) -> Any:
    """A nested config whose settings are exposed flat under ``prefix``."""
    return Field(default_factory=default_factory, json_schema_extra={"prefix": prefix})


@dataclass(frozen=True)
class SettingSpec:
    """One exposed setting, flattened: what a DAG Param or a CLI flag is made from."""

    name: str  # flat name: DAG param key, CLI flag dest
    path: tuple[str, ...]  # attribute path in the config model
    default: Any
    kind: str  # integer | number | string | boolean
    nullable: bool
    enum: tuple[Any, ...] | None
    minimum: float | None
    maximum: float | None
    title: str
    description: str
    section: str


_KINDS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _kind(annotation: Any) -> tuple[str, bool, tuple[Any, ...] | None]:
    """(json kind, nullable, enum) of a field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind, _, enum = _kind(inner[0])
        return kind, type(None) in args, enum
    if typing.get_origin(annotation) is Literal:
        return _KINDS[type(args[0])], False, tuple(args)
    return _KINDS[annotation], False, None


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Le):
            hi = m.le
    return lo, hi


def specs(model: type[BaseModel], prefix: str = "", path: tuple[str, ...] = ()) -> list[SettingSpec]:
    """The exposed settings of a config model (nested configs flattened), in declaration order."""
    out: list[SettingSpec] = []
    for name, info in model.model_fields.items():
        extra = _extra(info)
        if "prefix" in extra and isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out += specs(info.annotation, prefix + extra["prefix"], path + (name,))
            continue
        if not info.title:
            continue
        kind, nullable, enum = _kind(info.annotation)
        lo, hi = _bounds(info)
        out.append(
            SettingSpec(
                name=prefix + extra.get("param", name),
                path=path + (name,),
                default=info.get_default(call_default_factory=True),
                kind=kind,
                nullable=nullable,
                enum=enum,
                minimum=lo,
                maximum=hi,
                title=info.title,
                description=info.description or "",
                section=extra["section"],
            )
        )
    return out


def from_flat(model: type[BaseModel], values: Mapping[str, Any], **fixed: Any) -> Any:
    """Build ``model`` from flat settings (DAG params, CLI namespace); keys it does not declare are ignored."""
    data: dict[str, Any] = {}
    for spec in specs(model):
        if spec.name in values:
            target = data
            for part in spec.path[:-1]:
                target = target.setdefault(part, {})
            target[spec.path[-1]] = values[spec.name]
    return model.model_validate({**data, **fixed})


def to_flat(config: BaseModel) -> dict[str, Any]:
    """The exposed settings of a config instance, flat (the inverse of ``from_flat``)."""
    out = {}
    for spec in specs(type(config)):
        value: Any = config
        for part in spec.path:
            value = getattr(value, part)
        out[spec.name] = value
    return out


# --- the configs ---------------------------------------------------------------------

# Declared once, used by more than one config (the pool's and stage 2's sharding).
SHARD_SIZE: Any = setting(
    20_000,
    ge=100,
    title="Shard size",
    section=SECTION_DATA,
    description="Pairs per shard (the unit of every mapped task downstream).",
)


class PrepareConfig(BaseModel):
    """Pre-processing into a pool of shards."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    shard_size: int = SHARD_SIZE
    ngram: int = NGRAM


class RMConfig(BaseModel):
    """A Bradley-Terry reward model's training setup (the titled fields are DAG params / CLI flags ``rm_*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: RMMode = setting(
        "full",
        title="RM training mode",
        section=SECTION_RM,
        description="full: fine-tune the backbone with TRL's RewardTrainer; "
        "frozen: frozen encoder + BT head (fast on CPU).",
    )
    backbone: str | None = setting(
        None,
        title="RM backbone",
        section=SECTION_RM,
        description="HF sequence-classification checkpoint (name or path). "
        "Empty: the packaged all-MiniLM-L6-v2 (CPU, offline).",
    )
    max_length: int = setting(
        256, ge=32, title="RM max tokens", section=SECTION_RM, description="A pair's text is truncated to this."
    )
    epochs: int = setting(1, ge=1, title="RM epochs", section=SECTION_RM, description="Passes over the training set.")
    learning_rate: float = setting(
        3e-5, title="RM learning rate (full mode)", section=SECTION_RM, param="lr", description="AdamW's peak rate."
    )
    batch_size: int = 16
    eval_steps: int = 50  # at most; at least once per epoch
    min_steps: int = 200  # full mode: optimizer updates however small the training set
    patience: int = 3  # full mode: evaluations without improvement before stopping
    head_hidden: int = 256
    head_epochs: int = 40
    head_lr: float = 2e-3
    seed: int = 0


class AnnotateSettings(BaseModel):
    """How pairs are judged (shared by stage 1, stage 2 and ``synpref annotate``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    samples: int | None = setting(
        None,
        ge=1,
        title="Self-consistency samples",
        section=SECTION_ANNOTATION,
        description="Verdicts sampled per annotator per pair (separate requests). "
        "Empty: each annotator's own setting.",
    )
    sampling: SamplingPolicy = setting(
        "adaptive",
        title="Self-consistency sampling",
        section=SECTION_ANNOTATION,
        description="adaptive: ask an annotator again only while its verdict on the pair is still open (stop as "
        "soon as the remaining samples cannot change its majority: the majority fixed sampling would give); "
        "fixed: always every sample.",
    )
    merge_policy: MergePolicy = setting(
        "majority",
        title="Cross-model merge policy",
        section=SECTION_ANNOTATION,
        description="How annotators' verdicts merge into a pair's label: majority of the annotators, unanimous, or "
        "weighted by each annotator's accuracy on the gold probe.",
    )
    max_examples: int = setting(
        8,
        ge=0,
        le=32,
        title="Few-shot gold examples",
        section=SECTION_ANNOTATION,
        description="Similar human-verified pairs shown in each judging prompt.",
    )
    preference_aware: bool = setting(
        True,
        title="Preference-aware annotation",
        section=SECTION_ANNOTATION,
        description="On (the paper): a judging prompt shows the similar gold examples with the humans' verdicts, "
        "the pair's guideline and its preference attributes. Off: plain judging (no examples, the default "
        "guideline, no attributes) — the paper's 'pure LLM curation' ablation.",
    )
    budget_usd: float | None = setting(
        None,
        title="LLM budget (USD)",
        section=SECTION_ANNOTATION,
        description="Stop issuing new requests once spent (split evenly across annotator tasks); "
        "the rest is marked not_annotated_budget.",
    )
    seed: int = setting(
        0, title="Seed", section=SECTION_ANNOTATION, description="Seeds candidate order, sampling and training."
    )


class Stage1Config(AnnotateSettings):
    """A round's settings: annotation (inherited), adaptive retrieval, reward models."""

    k_max: int = setting(
        8,
        ge=1,
        le=64,
        title="k_max",
        section=SECTION_RETRIEVAL,
        description="Neighbours pulled for each gold pair the RM gets wrong (fewer when it is confidently right).",
    )
    retrieval: RetrievalPolicy = setting(
        "adaptive",
        title="Retrieval policy",
        section=SECTION_RETRIEVAL,
        description="adaptive: error-driven adaptive retrieval (the paper): neighbours of the gold pairs the RM gets "
        "wrong. For ablation, at the same budget (as many pool pairs as adaptive retrieval pulls): random: a seeded "
        "random draw; uncertainty: the pairs the best RM is least sure of (p nearest 0.5; scores the whole pool).",
    )
    retrieved_to: RetrievedTo = setting(
        "judges",
        title="Retrieved pairs go to",
        section=SECTION_RETRIEVAL,
        description="judges: preference-aware LLM annotation (the paper): agreeing verdicts join silver, contested "
        "ones the review queue. For ablation: silver: no curation, the pairs join silver with their stored labels; "
        "humans: no LLM annotation, every pair goes to the review queue (human curation only).",
    )
    review_order: ReviewOrder = setting(
        "priority",
        title="Review-queue order",
        section=SECTION_RETRIEVAL,
        description="priority: objective, low-controversiality pairs first (by their preference attributes); "
        "random: a seeded random order (the ablation without attributes).",
    )
    spot_check: int = setting(
        20,
        ge=0,
        title="Spot-check sample",
        section=SECTION_RETRIEVAL,
        description="New silver pairs also queued for human review each round.",
    )
    silver_precision: float = setting(
        0.9,
        ge=0.5,
        le=0.999,
        title="Silver precision",
        section=SECTION_RETRIEVAL,
        description="A judged pool pair joins silver only when the calibrated confidence in its label (the judges "
        "weighed by their probe accuracy, over the pool's estimated share of right labels) reaches this; "
        "contested ones go to the review queue, the rest stay in the pool. 0.5: every decided verdict.",
    )
    judge_probe: int = setting(
        64,
        ge=0,
        title="Judge probe (gold pairs)",
        section=SECTION_ANNOTATION,
        description="Gold pairs each annotator judges blind every round, to measure its accuracy and "
        "position bias (weighted merge, stage-2 decisions). 0: none.",
    )
    seed_silver: int = setting(
        2000,
        ge=1,
        title="Seed silver from the pool",
        section=SECTION_RETRIEVAL,
        description="First round only, when the root has no seed/silver: unverified pool pairs (a seeded "
        "sample, at most half the pool) the best RM first trains on, as the paper's seed is unverified data.",
    )
    rm_benchmarks: str | None = setting(
        None,
        title="RM benchmarks",
        section=SECTION_RM,
        description="Public RM benchmark files or URIs, comma-separated (RewardBench: prompt/chosen/rejected/subset; "
        "JudgeBench-style: question/response_A/response_B/label; any pair format the readers take): both RMs are "
        "scored on them every round (accuracy with intervals, per subset; RewardBench's sections), compared with "
        "the previous round's. Empty: none.",
    )
    benchmark_gate: bool = setting(
        True,
        title="Sign-off when an RM benchmark regresses",
        section=SECTION_RM,
        description="A round whose best RM is worse than the previous round's on a benchmark (the whole paired "
        "interval below 0) waits for a human sign-off before it publishes, even when sign_off is off.",
    )
    rm: RMConfig = nested(RMConfig, prefix="rm_")
    validation_fraction: float = 0.2

    @property
    def benchmark_uris(self) -> list[str]:
        return benchmark_uris(self.rm_benchmarks)

    @property
    def rm_config(self) -> RMConfig:
        """Both RMs of a round train with the round's seed."""
        return self.rm.model_copy(update={"seed": self.seed})


class Stage2Source(BaseModel):
    """Which stage-1 round supplies the reward models and the gold set."""

    round: str = setting(
        "latest",
        title="Stage-1 round",
        section=SECTION_CONSISTENCY,
        description="Round (YYYY-MM-DD) supplying the best RM and gold RM; 'latest' = newest completed.",
    )


def benchmark_uris(value: str | None) -> list[str]:
    """The comma-separated ``rm_benchmarks`` setting as a list of URIs."""
    return [u.strip() for u in (value or "").split(",") if u.strip()]


class Stage2Config(AnnotateSettings):
    """A stage-2 run's settings: annotation (inherited), sharding, the decision rule and its parameters."""

    decision_rule: DecisionRuleName = setting(
        "reliability",
        title="Decision rule",
        section=SECTION_CONSISTENCY,
        description="reliability: every source counts by its reliability measured on gold, decisions reach "
        "the target precision (default); paper: Skywork-Reward-V2's rule as published (reproduction).",
    )
    target_precision: float = setting(
        0.98,
        ge=0.5,
        le=0.999,
        title="Target precision",
        section=SECTION_CONSISTENCY,
        description="reliability rule: keep (or flip) a pair only when the confidence in its label reaches "
        "this; pairs below it go to the LLM judges, least certain first.",
    )
    rm_only_confidence: float = setting(
        0.995,
        ge=0.5,
        le=0.9999,
        title="Confidence to skip the judges",
        section=SECTION_ADVANCED,
        description="reliability rule: the RMs alone decide a pair (no judge call) only at or above this "
        "confidence (never below the target). Their calibration comes from gold, which need not look like "
        "in-the-wild data, so this bar is stricter than the target.",
    )
    keep_stop_confidence: float = setting(
        0.99,
        ge=0.5,
        le=0.9999,
        title="Confidence to stop judging a keep",
        section=SECTION_ADVANCED,
        description="reliability rule, judges in sequence: a pair stops getting votes for its label only at this "
        "confidence (never below the target); the decision still keeps at the fitted keep threshold. Stopping at "
        "the target itself asks fewest requests, but its kept pairs sit at the target while fixed sampling's "
        "extra votes carry them well past it (docs/scale.md, Judging at scale).",
    )
    flip_stop_confidence: float = setting(
        0.995,
        ge=0.5,
        le=0.9999,
        title="Confidence to stop judging a flip",
        section=SECTION_ADVANCED,
        description="reliability rule, judges in sequence: a pair headed for a flip stops getting votes only at "
        "this confidence in the flipped label (never below the target); the decision still flips at the target. "
        "Stricter than a keep's: a flip rests on the judges alone, whose errors gather on hard pairs.",
    )
    judges_in_sequence: bool = setting(
        True,
        title="Stop across annotators",
        section=SECTION_ANNOTATION,
        description="Annotators judge a shard one after another, the most reliable on the gold probe first; a "
        "pair goes to the next only while the decision rule leaves it open (reliability rule: the RMs and the "
        "judges so far give neither label the target precision, and a keep or a flip is still reachable). "
        "Off: every annotator judges every routed pair.",
    )
    canaries: int = setting(
        200,
        ge=0,
        title="Canary pairs",
        section=SECTION_CONSISTENCY,
        description="Held-out gold pairs sent through stage 2 blind, in both orientations, to estimate kept "
        "precision, retention and recycled precision with intervals (never exported). 0: none.",
    )
    min_confidence: float = setting(
        0.9,
        ge=0.5,
        le=0.999,
        title="Minimum pair confidence",
        section=SECTION_ADVANCED,
        description="reliability rule: no pair is kept below this confidence, even when the kept set's "
        "expected precision would still reach the target (at most the target).",
    )
    target_retention: float = setting(
        0.3,
        ge=0.0,
        le=1.0,
        title="Retention to fall back for",
        section=SECTION_CONSISTENCY,
        description="reliability rule: when the pairs kept at the target precision hold less than this share of "
        "a shard's estimated right labels, keep at the highest lower precision (not below the precision floor) "
        "that holds it; flips stay at the target. 0: never fall back. With a target of 0.999 this is the "
        "operating point 'best precision at this retention'.",
    )
    precision_floor: float = setting(
        0.9,
        ge=0.5,
        le=0.999,
        title="Precision floor of the fallback",
        section=SECTION_ADVANCED,
        description="reliability rule: the lowest estimated precision the retention fallback keeps at (at most "
        "the target). Nothing reaches it: the run publishes what reaches the target and says what was reachable.",
    )
    band: float = setting(
        0.0,
        ge=0.0,
        le=0.5,
        title="Band around 0.5",
        section=SECTION_CONSISTENCY,
        description="paper rule: pairs with p_best in (0.5, 0.5+band] also go to LLM re-annotation.",
    )
    recycle_policy: RecyclePolicy = setting(
        "rule_default",
        title="Recycle policy",
        section=SECTION_CONSISTENCY,
        description="positive_evidence: flip only when the confidence in the flipped label reaches the target "
        "and the judges disagree with the stored label; both_rms_reject: flip pairs both RMs reject (seed rule); "
        "all_discarded: flip every discarded pair (paper); rule_default: positive_evidence for the reliability "
        "rule, both_rms_reject for the paper rule.",
    )
    rm_benchmarks: str | None = setting(
        None,
        title="RM benchmarks",
        section=SECTION_DOWNSTREAM,
        description="Public RM benchmark files or URIs, comma-separated (the formats of stage 1's rm_benchmarks), "
        "for the downstream check.",
    )
    downstream_pairs: int = setting(
        0,
        ge=0,
        title="Downstream check: training pairs",
        section=SECTION_DOWNSTREAM,
        description="0: off. Else a fresh RM (frozen backbone + BT head) is trained on this many pairs of the "
        "curated set and another on as many of the raw input, both scored on the RM benchmarks: the dataset card "
        "says which trains the better RM.",
    )
    shard_size: int = SHARD_SIZE
    _given: dict[str, float] = PrivateAttr(default_factory=dict)

    @property
    def benchmark_uris(self) -> list[str]:
        return benchmark_uris(self.rm_benchmarks)  # what ``_effective_confidences`` changed

    @model_validator(mode="after")
    def _effective_confidences(self) -> Stage2Config:
        """The values the reliability rule uses, recorded as such: ``min_confidence`` and ``precision_floor`` are at
        most the target, ``rm_only_confidence`` at least the target (the RMs alone never decide below what judging
        must reach), and so are the confidences at which judging in sequence stops."""
        effective = {
            "min_confidence": min(self.min_confidence, self.target_precision),
            "precision_floor": min(self.precision_floor, self.target_precision),
            **{
                name: max(getattr(self, name), self.target_precision)
                for name in ("rm_only_confidence", "keep_stop_confidence", "flip_stop_confidence")
            },
        }
        for name, value in effective.items():
            if value != getattr(self, name):
                self._given.setdefault(name, getattr(self, name))
                object.__setattr__(self, name, value)
        return self

    def adjusted(self) -> dict[str, dict[str, float]]:
        """The settings given one value and used another (``_effective_confidences``): recorded in the run's
        manifest beside the effective config, so no value is rewritten silently."""
        return {name: {"given": given, "effective": getattr(self, name)} for name, given in self._given.items()}


# --- annotators: one per LLM judge (the CLI's YAML file; in DAGs, an Airflow connection and its extra) ---


class AnnotatorConfig(BaseModel):
    """One annotator model behind an OpenAI-compatible endpoint. The API key is never serialised."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="A file name in the run's layout (DAGs: the connection id).",
    )
    base_url: str = Field(
        description="The OpenAI-compatible endpoint (DAGs: the connection's host); for `replay`, the recording."
    )
    model: str = Field(description="The model name the endpoint serves.")
    backend: str = Field(
        default="openai",
        exclude_if=lambda v: v == "openai",
        description="`openai` (any OpenAI-compatible endpoint), `replay` (recorded verdicts), or a registered "
        "`module:Class`.",
    )
    api_key_env: str | None = Field(default=None, description="CLI: the environment variable holding the API key.")
    api_key: str | None = Field(default=None, exclude=True, repr=False, description="DAGs: the connection's password.")
    samples: int = Field(default=3, ge=1, description="Verdicts asked per pair (self-consistency samples).")
    choices_per_request: int = Field(
        default=3,
        ge=1,
        le=128,
        description="Samples asked in one request (OpenAI's `n`: the prompt is sent and billed once); an endpoint "
        "that returns fewer (llama.cpp ignores `n`) is asked again for the rest. 1: one request a sample.",
    )
    order: Literal["auto", "random", "both"] = Field(
        default="auto",
        description="The candidates' order: `random` (seeded per request), `both` (a pair's requests alternate "
        "it: for a judge that answers the same every time, the other order is the new information), `auto` "
        "(random, unless the stage-1 probe finds the judge deterministic: both).",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, le=1_000_000, description="Completion tokens per answer.")
    max_concurrency: int = Field(default=4, ge=1, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(default=None, gt=0, description="Rate limit; empty: none.")
    timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of a request (connect: 10 s).")
    max_retries: int = Field(default=4, ge=0, le=100, description="The openai client's retries of a request.")
    price_in_per_1k: float = Field(default=0.0, ge=0.0, description="USD per 1,000 prompt tokens.")
    price_out_per_1k: float = Field(default=0.0, ge=0.0, description="USD per 1,000 completion tokens.")
    price_cached_in_per_1k: float | None = Field(
        default=None,
        ge=0.0,
        description="USD per 1,000 prompt tokens the endpoint reports as served from its prefix cache; empty: the "
        "input price.",
    )
    max_error_share: float = Field(
        default=0.25, ge=0.0, le=1.0, description="More failed requests than this share fail the task."
    )
    verdicts: Literal["sampled", "logprobs", "auto"] = Field(
        default="sampled",
        description="`sampled`: self-consistency votes; `logprobs`: one request, the verdict token's probability "
        "(the endpoint must return logprobs); `auto`: logprobs where the endpoint has them.",
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="`online`: one HTTP request per verdict; `batch`: the task's missing requests go out as one "
        "OpenAI Batch API job, waited for in Airflow's triggerer, at the batch price.",
    )
    batch_discount: float = Field(default=0.5, ge=0.0, le=1.0, description="The batch price's discount.")
    cache_namespace: str | None = Field(default=None, description="The response cache's namespace; empty: base_url.")
    cache: Literal["use", "refresh"] = Field(
        default="use", description="`refresh`: ask again and overwrite (never reuse) cached answers."
    )
    CONNECTION_OWN: ClassVar[tuple[str, ...]] = ("name", "base_url", "model", "api_key", "api_key_env")

    @classmethod
    def connection_extras(cls) -> tuple[str, ...]:
        """The settings an Airflow connection's extra may hold (all but the connection's own: id, host, password)."""
        return tuple(f for f in cls.model_fields if f not in cls.CONNECTION_OWN)

    @model_validator(mode="after")
    def _url(self) -> AnnotatorConfig:
        u = urlparse(self.base_url)
        if self.backend == "openai" and (u.scheme not in ("http", "https") or not u.netloc):
            raise PydanticCustomError(
                "url", "base_url must be an http(s) URL such as http://host:8000/v1, got '{v}'", {"v": self.base_url}
            )
        return self

    @model_validator(mode="after")
    def _both_orders(self) -> AnnotatorConfig:
        if self.order == "both" and self.samples <= self.choices_per_request:
            raise PydanticCustomError(
                "order",
                "order: both asks a pair's requests in alternating orders, so it needs more samples than choices a "
                "request (e.g. samples: 2, choices_per_request: 1), got samples {s}, choices_per_request {c}",
                {"s": self.samples, "c": self.choices_per_request},
            )
        return self

    @field_validator("name", "model")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def resolved_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                return key
            raise AnnotatorError(
                f"annotator '{self.name}': environment variable {self.api_key_env} (its API key) is not set"
            )
        return "no-key"

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD of one answer at this annotator's prices: cached prompt tokens at the cached price, the batch price
        in batch mode."""
        cached_price = self.price_in_per_1k if self.price_cached_in_per_1k is None else self.price_cached_in_per_1k
        cost = (
            (prompt_tokens - cached_tokens) / 1000 * self.price_in_per_1k
            + cached_tokens / 1000 * cached_price
            + completion_tokens / 1000 * self.price_out_per_1k
        )
        return cost * (1 - self.batch_discount) if self.mode == "batch" else cost


class AnnotatorError(RuntimeError):
    """A misconfigured annotator (bad URL, bad key, unknown model, a bad annotators file): fails the task
    (the CLI exits 2) with one line naming the annotator and the field."""
