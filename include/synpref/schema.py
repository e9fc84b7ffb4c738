"""The canonical preference-pair record: pydantic validation, Arrow schema, stable pair_id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant"]
Provenance = Literal["unverified", "seed", "human", "llm", "rm", "recycled"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str

    @field_validator("content")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty message content")
        return v


class Attributes(BaseModel):
    """The paper's 5 preference attributes of a pair."""

    model_config = ConfigDict(extra="forbid")
    task_category: str = Field(min_length=1)
    preference_objectivity: Literal["objective", "subjective"]
    controversiality: Literal["low", "medium", "high"]
    desired_attributes: list[str] = Field(min_length=1)
    annotation_guideline: str = Field(min_length=1)


ATTRIBUTE_FIELDS: tuple[str, ...] = tuple(Attributes.model_fields)


class PairRecord(BaseModel):
    """One preference pair: conversation x, chosen y_w, rejected y_l, attributes, provenance."""

    model_config = ConfigDict(extra="forbid")
    pair_id: str = ""
    conversation: list[Message] = Field(min_length=1)
    chosen: str
    rejected: str
    source: str = "unknown"
    task_category: str | None = None
    preference_objectivity: Literal["objective", "subjective"] | None = None
    controversiality: Literal["low", "medium", "high"] | None = None
    desired_attributes: list[str] | None = None
    annotation_guideline: str | None = None
    provenance: Provenance = "unverified"
    flipped: bool = False
    round: str | None = None
    source_id: str | None = None  # an id the input supplied that is not the computed pair_id

    @field_validator("chosen", "rejected")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty response")
        return v

    @model_validator(mode="after")
    def _check(self) -> PairRecord:
        if self.conversation[-1].role != "user":
            raise ValueError("conversation must end with a user turn (the final assistant turn is chosen/rejected)")
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are identical")
        expected = compute_pair_id(self.conversation, self.chosen, self.rejected, self.flipped)
        if self.pair_id and self.pair_id != expected and self.source_id is None:
            self.source_id = self.pair_id  # never trusted as identity: kept as the source's id
        self.pair_id = expected
        return self


ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # = json.dumps with these options


def _messages_json(conversation: Iterable[Message | dict]) -> str:
    return ENCODE(
        [
            m.model_dump() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]}
            for m in conversation
        ]
    )


def _canonical(conversation: Iterable[Message | dict], chosen: str, rejected: str) -> str:
    return f"[{_messages_json(conversation)},{ENCODE(chosen)},{ENCODE(rejected)}]"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def pair_keys(
    conversation: Iterable[Message | dict], chosen: str, rejected: str, flipped: bool = False
) -> tuple[str, str]:
    """(pair_id, content key) from one encoding of the pair. The content key is orientation-free: the
    same conversation and responses whichever is chosen (exact and mirrored copies share it)."""
    return pair_keys_of(_messages_json(conversation), chosen, rejected, flipped)


def pair_keys_of(conversation_json: str, chosen: str, rejected: str, flipped: bool = False) -> tuple[str, str]:
    """``pair_keys`` of a conversation already encoded as compact JSON role/content messages."""
    conv, c, r = conversation_json, ENCODE(chosen), ENCODE(rejected)
    first, second = (r, c) if flipped else (c, r)
    lo, hi = sorted((c, r))
    return _sha(f"[{conv},{first},{second}]"), _sha(f"[{conv},{lo},{hi}]")


def compute_pair_id(conversation: Iterable[Message | dict], chosen: str, rejected: str, flipped: bool = False) -> str:
    """Stable identity: sha256 of (conversation, chosen, rejected) in the orientation as first ingested.

    A flipped pair keeps the identity of its original orientation (so ids stay stable across
    human flips and recycling); pass ``flipped=True`` with the current orientation.
    """
    if flipped:
        chosen, rejected = rejected, chosen
    return _sha(_canonical(conversation, chosen, rejected))


MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("conversation", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("source", pa.string()),
        ("task_category", pa.string()),
        ("preference_objectivity", pa.string()),
        ("controversiality", pa.string()),
        ("desired_attributes", pa.list_(pa.string())),
        ("annotation_guideline", pa.string()),
        ("provenance", pa.string()),
        ("flipped", pa.bool_()),
        ("round", pa.string()),
        ("source_id", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)


def records_to_table(records: Iterable[PairRecord | dict]) -> pa.Table:
    rows = [r.model_dump() if isinstance(r, PairRecord) else r for r in records]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def has_attributes(row: dict[str, Any]) -> bool:
    return all(row.get(f) not in (None, "", []) for f in ATTRIBUTE_FIELDS)


def flip(row: dict[str, Any]) -> dict[str, Any]:
    """Swap chosen and rejected, toggling ``flipped`` (pair_id is kept)."""
    out = dict(row)
    out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
    out["flipped"] = not bool(row.get("flipped"))
    return out


def prompt_text(conversation: list[dict]) -> str:
    """Flatten a conversation to plain text (for embedding, n-grams and RM input)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation)


def to_trl(table: pa.Table) -> pa.Table:
    """TRL conversational form: chosen/rejected as full message lists, plus provenance columns."""
    rows = []
    for r in table.to_pylist():
        conv = r["conversation"]
        rows.append(
            {
                "pair_id": r["pair_id"],
                "chosen": conv + [{"role": "assistant", "content": r["chosen"]}],
                "rejected": conv + [{"role": "assistant", "content": r["rejected"]}],
                **{k: r[k] for k in ("source", "provenance", "flipped", "round", *ATTRIBUTE_FIELDS)},
            }
        )
    schema = pa.schema(
        [("pair_id", pa.string()), ("chosen", pa.list_(MESSAGE_TYPE)), ("rejected", pa.list_(MESSAGE_TYPE))]
        + [PAIR_SCHEMA.field(k) for k in ("source", "provenance", "flipped", "round", *ATTRIBUTE_FIELDS)]
    )
    return pa.Table.from_pylist(rows, schema=schema)
