"""The storage layout, named once: every artifact path of every stage lives here.

Steps receive layout objects instead of rebuilding paths from a root. ``StorageLayout`` is the
root (pool, seed, inbox, rounds, stage-2 runs, caches) and owns round discovery, so stage 1 and
stage 2 are siblings that both ask it which rounds exist. The README's storage-layout block is
checked against these objects (``tests/test_layout.py``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from synpref.io.storage import PathLike, StorageError, as_path, is_input_only, read_json, write_json

MANIFEST = "manifest.json"
SEED_ROUND = "0000-seed"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def round_name(rnd: str) -> str:
    """A round's name checked where its path is made: a date ``YYYY-MM-DD`` (or the seed round)."""
    if rnd == SEED_ROUND:
        return rnd
    try:
        if dt.date.fromisoformat(rnd).isoformat() == rnd:
            return rnd
    except (TypeError, ValueError):
        pass
    raise StorageError(f"round {rnd!r} is not a date YYYY-MM-DD")


def run_name(name: str) -> str:
    """A stage-2 run's name checked where its path is made: one path segment of letters, digits, ``._-``."""
    if not isinstance(name, str) or not _RUN_NAME.match(name) or ".." in name:
        raise StorageError(f"run name {name!r}: use letters, digits, '.', '_' and '-' (one folder name, no '..')")
    return name


def _dir(path: PathLike) -> Any:
    if is_input_only(path):
        raise StorageError(f"{path}: a Hugging Face Hub dataset can be an input, not a storage root (read only)")
    return as_path(path)


@dataclass(frozen=True)
class _Directory:
    """A directory of the layout whose ``manifest.json``, written last, marks it complete."""

    dir: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", _dir(self.dir))

    @property
    def manifest(self) -> Any:
        return self.dir / MANIFEST

    def is_complete(self) -> bool:
        return self.manifest.exists()


@dataclass(frozen=True)
class PoolLayout(_Directory):
    """A prepared pool: shards + what pre-processing set aside, manifest last (``pool/``, stage-2 ``prepared/``)."""

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:05d}.parquet"

    def shard(self, index: int) -> Any:
        return self.dir / self.shard_name(index)

    def table(self, name: str) -> Any:
        """``duplicates`` / ``contaminated`` / ``quarantine`` (one table per pre-processing outcome), and the
        rules' side tables (``label_conflicts``)."""
        return self.dir / f"{name}.parquet"

    @property
    def quarantine(self) -> Any:
        return self.table("quarantine")

    @property
    def repaired(self) -> Any:
        """Pairs kept in the shards whose malformed optional fields were dropped, with what was dropped."""
        return self.table("repaired")

    @property
    def staging(self) -> Any:
        """Per-input-file outputs of the mapped normalize step."""
        return self.dir / "_staging"

    @property
    def skipped_inputs(self) -> Any:
        """Input paths the listing step skipped, with why (copied into the manifest)."""
        return self.staging / "skipped.json"

    @property
    def plan(self) -> Any:
        """How the run is partitioned (written by the listing step)."""
        return self.staging / "plan.json"

    def staged(self, key: str, kind: str) -> Any:
        """``<key>.pairs.parquet`` / ``<key>.quarantine.parquet`` / ``<key>.counts.json`` of one input file."""
        return self.staging / f"{key}.{kind}"

    @property
    def source(self) -> Any:
        """Stage 2 only: ``{"source_pool": uri}`` when the run adopted an existing pool instead of preparing one."""
        return self.dir / "source.json"

    def shards(self) -> list[Any]:
        """Paths of the shards of a completed pool (from its manifest)."""
        return [self.dir / s["name"] for s in read_json(self.manifest)["shards"]]

    def shard_uris(self) -> list[str]:
        return [str(p) for p in self.shards()]


@dataclass(frozen=True)
class RoundLayout(_Directory):
    """One stage-1 round: ``<root>/rounds/<date>/``. Its manifest, written last, marks it complete."""

    @property
    def lock(self) -> Any:
        """The round's writer lock for in-process runs (``synpref stage1``): one writer per date."""
        return self.dir / ".writer.lock"

    @property
    def name(self) -> str:
        return self.dir.name

    def table(self, name: str) -> Any:
        """``<name>.parquet`` directly under the round (gold, gold_train, silver, retrieval, ...)."""
        return self.dir / f"{name}.parquet"

    gold = property(lambda self: self.table("gold"))
    gold_train = property(lambda self: self.table("gold_train"))
    gold_validation = property(lambda self: self.table("gold_validation"))
    discarded = property(lambda self: self.table("discarded"))
    human_verifications = property(lambda self: self.table("human_verifications"))
    intake_quarantine = property(lambda self: self.table("intake_quarantine"))
    human_conflicts = property(lambda self: self.table("human_conflicts"))
    report_dir = property(lambda self: self.dir / "report", doc="HTML report + figures (written after the manifest)")
    silver_in = property(lambda self: self.table("silver_in"))
    gold_eval = property(lambda self: self.table("gold_eval"))
    retrieval = property(lambda self: self.table("retrieval"))
    retrieved = property(lambda self: self.table("retrieved"))
    examples = property(lambda self: self.table("examples"))
    probe_examples = property(lambda self: self.table("probe_examples"), doc="few-shot examples of the judge probe")
    verdicts = property(lambda self: self.table("verdicts"))
    silver = property(lambda self: self.table("silver"))

    @property
    def gold_eval_metrics(self) -> Any:
        return self.dir / "gold_eval_metrics.json"

    def rm_benchmark(self, benchmark: str) -> Any:
        """Per pair of a public RM benchmark: its subset and whether the best RM and the gold RM ranked it right."""
        return self.dir / "rm_benchmarks" / f"{benchmark}.parquet"

    @property
    def calibration(self) -> Any:
        """Both RMs' temperature, reliability on held-out gold, ECE/Brier before and after, joint weights."""
        return self.dir / "calibration.json"

    @property
    def judges(self) -> Any:
        """Each annotator's accuracy and position bias, measured on blind gold probes."""
        return self.dir / "judges.json"

    @property
    def pool_attributes(self) -> Any:
        return self.dir / "pool_attributes"

    def pool_attributes_shard(self, shard_name: str) -> Any:
        return self.pool_attributes / shard_name

    @property
    def best_rm(self) -> Any:
        return self.dir / "rm"

    @property
    def gold_rm(self) -> Any:
        return self.dir / "gold_rm"

    def rm(self, which: str) -> Any:
        """``best`` → rm/, ``gold`` → gold_rm/."""
        return {"best": self.best_rm, "gold": self.gold_rm}[which]

    def annotator_dir(self, annotator: str) -> Any:
        return self.dir / "annotations" / annotator

    def samples(self, annotator: str) -> Any:
        return self.annotator_dir(annotator) / "samples.parquet"

    def usage(self, annotator: str) -> Any:
        return self.annotator_dir(annotator) / "usage.json"

    def probe(self, annotator: str) -> Any:
        """The annotator's samples on the blind gold probe."""
        return self.annotator_dir(annotator) / "probe.parquet"

    @property
    def review_queue(self) -> Any:
        return self.dir / "review_queue"

    @property
    def review_tasks(self) -> Any:
        """Label Studio import of the review queue."""
        return self.review_queue / "tasks.json"

    @property
    def review_queue_jsonl(self) -> Any:
        return self.review_queue / "queue.jsonl"

    @property
    def review_queue_table(self) -> Any:
        return self.review_queue / "queue.parquet"

    @property
    def steps(self) -> Any:
        return self.dir / "steps"

    def step(self, name: str) -> Any:
        return self.steps / f"{name}.json"

    @property
    def started(self) -> Any:
        return self.dir / "started.json"

    @property
    def rejected(self) -> Any:
        """Written when its sign-off was rejected: the round stays unpublished and later rounds do not wait for it."""
        return self.dir / "rejected.json"


@dataclass(frozen=True)
class ShardLayout:
    """Per-shard work of a stage-2 run: ``shards/<shard>/``."""

    dir: Any

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def scores(self) -> Any:
        return self.dir / "scores.parquet"

    @property
    def scores_marker(self) -> Any:
        """Counts + input fingerprint of the scores: a re-run skips scoring when it matches."""
        return self.dir / "scores.json"

    def samples(self, annotator: str) -> Any:
        return self.dir / "annotations" / annotator / "samples.parquet"

    def usage(self, annotator: str) -> Any:
        return self.dir / "annotations" / annotator / "usage.json"

    @property
    def batches(self) -> Any:
        """Batch-API submissions of batch-mode annotators (``<annotator>-<digest>.json``: batch ids, outcomes)."""
        return self.dir / "batches"

    @property
    def examples(self) -> Any:
        """Few-shot gold examples of the routed pairs and canaries (written by score: annotate needs no encoder)."""
        return self.dir / "examples.parquet"

    @property
    def canary_pairs(self) -> Any:
        """The canaries assigned to this shard (pairs + their gold pair id), built once by the score step."""
        return self.dir / "canary_pairs.parquet"

    @property
    def canary_scores(self) -> Any:
        """Scores and routing of the canaries assigned to this shard."""
        return self.dir / "canary_scores.parquet"

    @property
    def canaries(self) -> Any:
        """The canaries' decisions (never exported)."""
        return self.dir / "canaries.parquet"

    @property
    def success(self) -> Any:
        """Written last by the decide step: the shard's decisions are complete."""
        return self.dir / "_SUCCESS.json"


DECISIONS = ("kept", "recycled", "dropped")


@dataclass(frozen=True)
class Stage2Layout(_Directory):
    """One stage-2 run: ``<root>/stage2/<run>/`` (or any ``--out``)."""

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def prepared(self) -> PoolLayout:
        return PoolLayout(self.dir / "prepared")

    def pool(self) -> PoolLayout:
        """The pool this run curates: its own ``prepared/``, or the existing pool it adopted."""
        src = self.prepared.source
        return PoolLayout(read_json(src)["source_pool"]) if src.exists() else self.prepared

    @property
    def report_dir(self) -> Any:
        """HTML report + figures (written after the manifest; the dataset card links its figures)."""
        return self.dir / "report"

    @property
    def shards_dir(self) -> Any:
        return self.dir / "shards"

    def shard(self, shard_uri: PathLike) -> ShardLayout:
        return ShardLayout(self.shards_dir / as_path(shard_uri).name.removesuffix(".parquet"))

    def split_dir(self, decision: str) -> Any:
        """``kept/``, ``recycled/`` or ``dropped/``."""
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; expected one of {DECISIONS}")
        return self.dir / decision

    def part(self, decision: str, shard_name: str) -> Any:
        return self.split_dir(decision) / f"part-{shard_name}.parquet"

    @property
    def quarantined(self) -> Any:
        return self.dir / "quarantined.parquet"

    @property
    def lock(self) -> Any:
        """The run's writer lock (``synpref.io.storage.WriterLock``): one writer per output at a time."""
        return self.dir / ".writer.lock"

    @property
    def estimates(self) -> Any:
        """Counts and quality estimates before export (shown by the sign-off; copied into the manifest)."""
        return self.dir / "estimates.json"

    @property
    def downstream(self) -> Any:
        """The downstream check: RMs trained on the curated set and on the raw input, scored on RM benchmarks."""
        return self.dir / "downstream.json"

    def downstream_rm(self, trained_on: str) -> Any:
        """The downstream check's RM trained on ``curated`` or ``raw`` pairs."""
        return self.dir / "downstream" / trained_on

    @property
    def dataset_card(self) -> Any:
        return self.dir / "README.md"


@dataclass(frozen=True)
class StorageLayout:
    """A storage root (``file://`` or ``s3://<conn>@<bucket>/<prefix>``) and everything under it.

    ``pool_dir`` points the rounds at an unverified pool elsewhere (default ``<root>/pool``); every step
    reads the pool through ``pool``, so a round never mixes two pools."""

    root: Any
    pool_dir: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _dir(self.root))
        if self.pool_dir is not None:
            object.__setattr__(self, "pool_dir", _dir(self.pool_dir))

    raw = property(lambda self: self.root / "raw")
    wild = property(lambda self: self.root / "wild")
    benchmark_prompts = property(lambda self: self.root / "benchmarks" / "prompts.txt")
    seed = property(lambda self: self.root / "seed")
    llm_cache = property(lambda self: self.root / "cache" / "llm")
    report_dir = property(lambda self: self.root / "report", doc="`synpref report`: the whole root on one page")

    @property
    def pool(self) -> PoolLayout:
        return PoolLayout(self.pool_dir if self.pool_dir is not None else self.root / "pool")

    @property
    def inbox_dir(self) -> Any:
        return self.root / "inbox"

    def inbox(self, rnd: str) -> Any:
        return self.inbox_dir / rnd

    def embedding_cache(self, shard_name: str) -> Any:
        """Pool embeddings of one shard, keyed by pair_id + text hash."""
        return self.root / "cache" / "embeddings" / shard_name

    def gold_embedding_cache(self, rnd: str) -> Any:
        """A round's gold embeddings (few-shot examples of every annotate task), keyed by pair_id + text hash."""
        return self.root / "cache" / "embeddings" / "gold" / rnd

    @property
    def index_cache(self) -> Any:
        """Retrieval indexes of the pool, one per pool version (``adaptive_retrieval.IndexCache``)."""
        return self.root / "cache" / "index"

    @property
    def rounds_dir(self) -> Any:
        return self.root / "rounds"

    def round(self, rnd: str) -> RoundLayout:
        return RoundLayout(self.rounds_dir / round_name(rnd))

    @property
    def stage2_dir(self) -> Any:
        return self.root / "stage2"

    def stage2(self, run: str) -> Stage2Layout:
        return Stage2Layout(self.stage2_dir / run_name(run))

    def completed_stage2_runs(self) -> list[str]:
        """Stage-2 runs under ``<root>/stage2/`` that have published a manifest (runs with ``--out``
        elsewhere are not found here)."""
        d = self.stage2_dir
        names = [p.name for p in d.iterdir()] if d.exists() else []
        return sorted(n for n in names if _RUN_NAME.match(n) and self.stage2(n).is_complete())

    # --- round discovery (shared by stage 1, stage 2 and the reports) --------------------

    def _round_names(self) -> list[str]:
        d = self.rounds_dir
        names = [p.name for p in d.iterdir()] if d.exists() else []
        return [n for n in names if _is_round_name(n)]

    def completed_rounds(self) -> list[str]:
        return sorted(r for r in self._round_names() if self.round(r).is_complete())

    def rounds_in_progress(self, rnd: str) -> list[str]:
        """Rounds dated before ``rnd`` that have started (their prefix exists), are not published yet and were
        not rejected at their sign-off."""
        return sorted(
            r
            for r in self._round_names()
            if r < rnd and r != SEED_ROUND and not self.round(r).is_complete() and not self.round(r).rejected.exists()
        )

    def begin_round(self, rnd: str) -> list[str]:
        """Start ``rnd`` unless earlier rounds are still in progress (then return them and start nothing).

        Starting writes ``rounds/<rnd>/started.json``, so a later round checking right after this one
        started (before it wrote anything else) waits for it too.
        """
        pending = self.rounds_in_progress(rnd)
        if not pending:
            write_json({"round": rnd}, self.round(rnd).started)
            if self.round(rnd).rejected.exists():  # re-run after a rejection: it may be published this time
                self.round(rnd).rejected.unlink()
        return pending

    def previous_round(self, rnd: str) -> str | None:
        """The newest completed round strictly before ``rnd`` (None → the seed)."""
        earlier = [r for r in self.completed_rounds() if r < rnd and r != SEED_ROUND]
        return earlier[-1] if earlier else None

    def resolve_round(self, rnd: str = "latest") -> str:
        """A completed round by name, or the newest one for ``latest``/empty."""
        rounds = [r for r in self.completed_rounds() if r != SEED_ROUND]
        if rnd in ("", "latest"):
            if not rounds:
                raise FileNotFoundError(
                    f"no completed stage-1 round under {self.rounds_dir}: run synpref_stage1 first"
                )
            return rounds[-1]
        if rnd not in rounds:
            raise FileNotFoundError(f"stage-1 round {rnd} is not completed (have: {rounds})")
        return rnd


def _is_round_name(name: str) -> bool:
    try:
        return round_name(name) == name
    except StorageError:
        return False


def layout(root: PathLike | StorageLayout) -> StorageLayout:
    """A ``StorageLayout`` from a root URI/path (or the layout itself)."""
    return root if isinstance(root, StorageLayout) else StorageLayout(root)
