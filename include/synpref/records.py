"""Typed records: everything that crosses a task or process boundary as JSON.

Pool manifest, each stage-1 step's record (``steps/<step>.json``), the round manifest, a stage-2 shard's
markers (``scores.json``, ``_SUCCESS.json``), the canaries' quality estimates, ``estimates.json`` and the
stage-2 manifest. Steps build them and write them with ``write``; the report, the plugin, the CLI and the
demo read them with ``read`` and use fields, not keys — a renamed or missing field fails where the record
is made or first read, with the file named, not in a later task.

The JSON keeps the shape it always had (``write`` leaves out fields never set, so an optional part that a
step did not produce stays absent). Records of open-ended content (a trainer's metrics, per-rule counts)
type the fields that are read and keep the rest as they come (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from synpref.io.storage import PathLike, read_json, write_json

Number = int | float  # a JSON number kept as it was written (an int stays an int)


class RecordFormatError(ValueError):
    """A JSON record that does not have the shape its reader expects."""


class Record(BaseModel):
    """A JSON record: ``write`` (validated, only the fields set) and ``read`` (validated, a one-line error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)

    def write(self, path: PathLike) -> str:
        return write_json(self.dump(), path)

    @classmethod
    def read(cls, path: PathLike) -> Self:
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "(root)"
            raise RecordFormatError(f"{path}: not a {cls.__name__} record ({where}: {first['msg']})") from None


class OpenRecord(Record):
    """A record whose typed fields are the ones read; other content is kept as it comes."""

    model_config = ConfigDict(extra="allow", frozen=True)


# --- the pool ------------------------------------------------------------------------------------


class ShardEntry(Record):
    name: str
    count: int


class PoolManifest(OpenRecord):
    """``<pool>/manifest.json``: input = pool + each rule's drops + quarantined; the shards. Extra keys: the
    row counts of the rules' side tables."""

    kind: Literal["pool"]
    counts: dict[str, int]
    shards: list[ShardEntry]
    files: list[dict[str, Any]]
    skipped_files: list[dict[str, Any]]
    repaired: int = 0  # of the pool's pairs: a malformed optional field dropped (``repaired.parquet``)


class PoolSource(Record):
    """``<run>/prepared/source.json``: the existing pool a stage-2 run adopted."""

    source_pool: str


# --- stage 1: step records ------------------------------------------------------------------------


class IntakeRecord(OpenRecord):
    previous_round: str
    silver_source: str
    inbox_verifications: int
    inbox_quarantined: int
    inbox_conflicts: int
    inbox_unknown_pairs: int
    inbox_attributes_generated: int = 0  # verifications without attributes, given generated ones
    inbox_attributes_missing: int = 0  # ... whose generation failed (or no attribute annotator): gold all the same
    gold: int
    gold_train: int
    gold_validation: int
    discarded: int
    silver_in: int


class TrainRecord(OpenRecord):
    """A reward model's training: where it is and what its trainer reported (mode-specific extras)."""

    uri: str
    select_accuracy: Number | None = None
    history: list[dict[str, Any]] = []


class RMCalibration(Record):
    weight: Number
    n: int
    ci_low: Number
    ci_high: Number
    significant: bool
    ece_before: Number
    ece_after: Number
    brier_before: Number
    brier_after: Number


class EvaluateRecord(Record):
    best_rm_gold_accuracy: Number | None
    per_category: dict[str, dict[str, Number]]
    errors: int
    gold_rm_validation_accuracy: Number | None
    calibration: dict[str, RMCalibration] = {}
    rm_joint_weights: dict[str, Number] = {}
    warnings: list[str] = []
    device: str | None = None  # where the RMs scored gold (resolved SYNPREF_DEVICE)
    truncated: int | None = None  # gold pairs cut to an RM's max length (both RMs)


class RetrieveRecord(Record):
    pool_pairs: int
    gold_pairs: int
    retrieved: int
    k_distribution: dict[str, int]
    pulled_by_rm_errors: int
    index: dict[str, Any]
    policy: str = "adaptive"  # the retrieval setting: adaptive, or an ablation baseline (random, uncertainty)


class Reliability(OpenRecord):
    """A source's accuracy on gold with its 95% Wilson interval (``significant``: the interval excludes 0.5)."""

    n: int
    accuracy: Number | None
    ci_low: Number
    ci_high: Number
    significant: bool


class JudgeStats(Reliability):
    pairs: int = 0
    abstained: int = 0
    position_bias: Number | None = None
    order_bias: Number | None = None  # P(slot 1 | better in slot 2) − P(slot 2 | better in slot 1)
    repeats_agree: Number | None = None  # share of pairs whose repeated samples of one order all agree
    orders_agree: Number | None = None  # share of pairs asked both orders whose verdicts agree across them
    asking: dict[str, Any] | None = None  # how an ``order: auto`` judge is asked since this probe (None: configured)


class Judges(Record):
    """``judges.json``: each annotator's reliability on the blind gold probe, and the shrink of their sum."""

    annotators: dict[str, JudgeStats] = {}
    shrink: Number = 1.0
    shrinks: list[Number] = []  # the factor of k judges' summed log-odds, k = 1, 2, ... (most reliable first)


class MergeRecord(OpenRecord):
    """The merge step: silver/queue counts (per outcome, open), verdicts, the judges, usage and cost."""

    silver_total: int
    review_queue: int
    verdicts: dict[str, int]
    annotator_stats: dict[str, Any]
    judges: Judges
    usage: dict[str, dict[str, Any]]
    cost_usd: Number
    tokens: int
    pool_prior: Number | None = None  # the judged pool pairs' estimated share of right labels
    silver_estimated_precision: Number | None = None  # the model's precision of this round's new silver pairs


class BenchmarkScore(Record):
    """One public RM benchmark scored in a round (``models.rm_benchmarks``): accuracy with Wilson intervals overall
    and per subset (RewardBench's section scores where its subsets are named) for both RMs, and the best RM's paired
    difference to the previous round's best RM on the same pairs (bootstrap interval)."""

    uri: str
    pairs: int
    skipped: int
    best_rm: dict[str, Any]
    gold_rm: dict[str, Any]
    previous_round: str | None = None
    vs_previous: dict[str, Number] | None = None  # difference, ci_low, ci_high (best RM, this round − previous)
    regressed: bool = False  # the whole interval of that difference is below 0


class RMBenchmarksRecord(Record):
    """``steps/rm_benchmarks.json``: every configured benchmark's scores, and which regressed."""

    benchmarks: dict[str, BenchmarkScore] = {}
    regressed: list[str] = []


class RoundSteps(Record):
    """Every step's record of a round (``steps/<step>.json``)."""

    intake: IntakeRecord
    train_best_rm: TrainRecord
    train_gold_rm: TrainRecord
    evaluate: EvaluateRecord
    retrieve: RetrieveRecord
    merge: MergeRecord
    rm_benchmarks: RMBenchmarksRecord | None = None  # rounds with benchmarks configured (``rm_benchmarks``)


class JudgeSummary(Record):
    accuracy: Number | None
    ci_low: Number
    ci_high: Number
    n: int


class RoundSummary(Record):
    silver_source: str | None
    inbox_verifications: int
    inbox_quarantined: int
    inbox_conflicts: int
    inbox_unknown_pairs: int
    inbox_attributes_generated: int = 0  # verifications without attributes, given generated ones
    inbox_attributes_missing: int = 0  # ... whose generation failed (or no attribute annotator): gold all the same
    gold: int
    silver: int
    silver_estimated_precision: Number | None = None  # of this round's new silver pairs (calibrated confidences)
    best_rm_gold_accuracy: Number | None
    gold_rm_validation_accuracy: Number | None
    retrieved: int
    review_queue: int
    cost_usd: Number
    tokens: int
    judges: dict[str, JudgeSummary]
    warnings: list[str]


class RoundManifest(Record):
    """``rounds/<date>/manifest.json``, written last: present = the round is complete."""

    kind: Literal["stage1_round"]
    round: str
    previous_round: str
    steps: RoundSteps
    params: dict[str, Any]
    artifacts: list[str]
    summary: RoundSummary


# --- stage 2 ---------------------------------------------------------------------------------------


class _ShardMarker(Record):
    """What both shard markers carry: the shard, its routing counts, the decision rule as stored (fitted) and the
    fingerprint of the shard's inputs."""

    shard: str
    canaries: int
    routed_to_llm: int
    rule: dict[str, Any]
    fitted: dict[str, Number]
    fingerprint: str

    def for_xcom(self) -> dict[str, Any]:
        """The marker without the rule itself (it stays in storage)."""
        return self.model_dump(mode="json", exclude={"rule"})


class ShardScores(_ShardMarker):
    """``shards/<shard>/scores.json``: the scoring step's counts, the decision rule as fitted to the shard's
    scores (annotate and decide read it back), and the fingerprint of its inputs (a re-run skips on a match)."""

    pairs: int
    in_gold: int
    device: str | None = None  # where the reward models ran (resolved SYNPREF_DEVICE)
    truncated: int | None = None  # pairs cut to an RM's max length (summed over the RMs)


class DecisionSummary(Record):
    """What the report needs of a shard, so it never reads the pairs: p histograms and categories by decision."""

    p_best: dict[str, list[int]]
    p_gold: dict[str, list[int]]
    categories: dict[str, dict[str, int]]


class ShardDecided(_ShardMarker):
    """``shards/<shard>/_SUCCESS.json``, written last by decide: input = kept + recycled + dropped."""

    input: int
    kept: int
    recycled: int
    dropped: int
    summary: DecisionSummary


class Interval(Record):
    estimate: Number | None
    ci_low: Number | None
    ci_high: Number | None


class QualityEstimates(Record):
    """The blind canaries' estimates (only ``canaries`` = 0 when there were none)."""

    canaries: int
    label_accuracy_of_input: Number | None = None
    retention: Interval | None = None
    kept_precision: Interval | None = None
    recycled_precision: Interval | None = None


class AnnotatorBill(Record):
    """What one annotator's judging of a stage-2 run cost (cache-invariant: answers fresh or cached)."""

    requests: int  # verdict requests asked (incl. the blind canaries')
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Number
    verdicts: str  # sampled | logprobs | auto
    mode: str = "online"  # online | batch (batch: the batch price)
    cached_prompt_tokens: int = 0  # served from the endpoint's prefix cache (as it reported), at the cached price
    shared_prefix_share: Number | None = None  # of the prompts' characters, in a prefix shared with an earlier prompt
    stopped: dict[str, int] = {}  # pairs by why sampling stopped (STOP_REASONS)
    samples: int | None = None  # verdict samples those requests gave (several choices a request); None: not counted


class JudgingBill(Record):
    """The LLM bill of a stage-2 run: per annotator, per input pair and per 1,000 curated (kept + recycled) pairs."""

    annotators: dict[str, AnnotatorBill]
    requests_per_input_pair: Number
    tokens_per_input_pair: Number
    cost_usd: Number
    cost_per_1k_curated_usd: Number | None
    settled: dict[str, int] = {}  # judging in sequence: pairs per reason no further annotator was asked


class FrontierPoint(Record):
    """At an estimated precision: the pairs a run at that target would keep, and flip (``stage2.frontier``)."""

    precision: Number
    kept: int
    recycled: int


class Frontier(Record):
    """The run's estimated precision–retention frontier, from its decisions' calibrated posteriors."""

    pairs: int  # decided pairs with a posterior (gold and rules without one are left out)
    target: Number  # the run's target_precision
    points: list[FrontierPoint]
    reason: str | None = None  # the run kept and flipped nothing by its rule: why, and what was reachable
    fallback: str | None = None  # shards that kept below the target to hold ``target_retention``: which, and at what
    kept_posterior: Number | None = None  # the mean posterior of the kept pairs: their precision as the model sees it


class DownstreamRecord(Record):
    """``downstream.json``: the same budget of pairs from the curated set and from the raw input, each training a
    fresh RM (``RMConfig`` frozen), both scored on every RM benchmark (``models.rm_benchmarks``)."""

    pairs: int  # training pairs of each RM (the rest of the sample selects its checkpoint)
    rm_mode: str
    benchmarks: dict[str, dict[str, Any]]  # name → curated / raw (overall accuracy, Wilson interval), difference


class Stage2Preview(Record):
    """``estimates.json``: counts and quality estimates before export (what a sign-off shows)."""

    kind: Literal["stage2_preview"]
    run: str
    round: str
    counts: dict[str, int]
    quality_estimates: QualityEstimates
    config: dict[str, Any]
    judging: JudgingBill | None = None
    frontier: Frontier | None = None


class Stage2Manifest(Record):
    """``stage2/<run>/manifest.json``, written last: counts (conservation checked), config, splits."""

    kind: Literal["stage2_run"]
    run: str
    round: str
    counts: dict[str, int]
    quality_estimates: QualityEstimates
    config: dict[str, Any]
    params: dict[str, Any]
    splits: dict[str, list[str]]
    tables: list[str]
    dataset_card: str
    judging: JudgingBill | None = None
    frontier: Frontier | None = None
    adjusted: dict[str, dict[str, Any]] | None = None  # settings given one value, used another (given, effective)
    downstream: DownstreamRecord | None = None  # RMs trained on the curated set and on the raw input
