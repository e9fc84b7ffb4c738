"""What every step of one stage-2 run reads, built once by its caller (a DAG task, the pipeline, a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from synpref.io.layout import RoundLayout, Stage2Layout, StorageLayout, layout
from synpref.io.storage import PathLike, as_path, read_parquet
from synpref.settings import Stage2Config


@dataclass(frozen=True)
class Stage2Run:
    """A stage-2 run: the storage root (``store``: the source round, the LLM cache), the run's output (``run``),
    the round whose RMs and gold it curates with (``rnd``) and its settings (``cfg``)."""

    store: StorageLayout
    run: Stage2Layout
    rnd: str
    cfg: Stage2Config = field(default_factory=Stage2Config)

    @classmethod
    def at(
        cls,
        root: PathLike | StorageLayout,
        out_dir: PathLike | Stage2Layout,
        rnd: str,
        cfg: Stage2Config | None = None,
    ) -> Stage2Run:
        """The run context of paths or layouts (the pipeline's, the benchmarks' and the tests' way in)."""
        run = out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)
        return cls(layout(root), run, rnd, cfg or Stage2Config())

    @property
    def round(self) -> RoundLayout:
        return self.store.round(self.rnd)


def gold_by_id(ctx: Stage2Run) -> dict[str, dict]:
    """The source round's gold pairs by pair id."""
    return {g["pair_id"]: g for g in read_parquet(ctx.round.gold).to_pylist()}


def run_shards(run: Stage2Layout) -> list[str]:
    """Names of the run's shards (from its pool manifest): for "shard i of n" in the task logs."""
    pool = run.pool()
    return [as_path(u).name for u in pool.shard_uris()] if pool.is_complete() else []
