"""Readers for the formats users have → canonical PairRecords, or quarantine rows with a reason.

Formats (detected per record):
- TRL conversational: ``chosen``/``rejected`` are full message lists (Skywork-Reward-Preference-80K);
- prompt/chosen/rejected: strings (or TRL's explicit-prompt form with message lists);
- HH-RLHF: ``chosen``/``rejected`` strings of ``\\n\\nHuman: … \\n\\nAssistant: …`` text;
- ours: ``conversation`` message list + ``chosen``/``rejected`` strings (+ attributes, provenance).
Files: ``.jsonl``, ``.json`` (a list or JSON lines), ``.parquet``, ``.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
from pydantic import ValidationError

from .schema import ATTRIBUTE_FIELDS, PairRecord
from .storage import PathLike, as_path, read_bytes

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_OPTIONAL = ("source", "pair_id", "provenance", "flipped", "round", *ATTRIBUTE_FIELDS)


class RecordError(ValueError):
    """A record that cannot become a pair; the message is the quarantine reason."""


@dataclass
class ReadResult:
    records: list[PairRecord] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.records) + len(self.quarantine)


def quarantine_row(source_file: str, index: int, reason: str, raw: Any) -> dict:
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return {"source_file": source_file, "record_index": index, "reason": reason, "raw": text[:2000]}


def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{what}: expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"{what}[{i}]: a message needs 'role' and 'content'")
        if m["content"] is None:
            raise RecordError(f"{what}[{i}]: content is None")
        if not isinstance(m["content"], str):
            raise RecordError(f"{what}[{i}]: content must be a string, got {type(m['content']).__name__}")
        if m["role"] not in ("system", "user", "assistant"):
            raise RecordError(f"{what}[{i}]: bad role {m['role']!r}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text(value: Any, what: str) -> str:
    if value is None:
        raise RecordError(f"{what} is missing (None)")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        msgs = _messages(value, what)
        if msgs[0]["role"] != "assistant":
            raise RecordError(f"{what}: the response message must have role 'assistant'")
        return msgs[0]["content"]
    if not isinstance(value, str):
        raise RecordError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def parse_hh(text: str) -> list[dict]:
    """``\\n\\nHuman: … \\n\\nAssistant: …`` → messages."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RecordError("HH-RLHF text must start with '\\n\\nHuman:' and alternate turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _split_final(messages: list[dict], what: str) -> tuple[list[dict], str]:
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise RecordError(f"{what}: no final assistant turn")
    return messages[:-1], messages[-1]["content"]


def normalize(raw: Any, default_source: str) -> PairRecord:
    """One raw record (dict) in any supported format → a validated PairRecord (or RecordError)."""
    if not isinstance(raw, dict):
        raise RecordError(f"record must be an object, got {type(raw).__name__}")
    for key in ("chosen", "rejected"):
        if key not in raw:
            raise RecordError(f"missing field '{key}'")
    chosen_raw, rejected_raw = raw["chosen"], raw["rejected"]
    if "conversation" in raw and raw["conversation"] is not None:
        conversation = _messages(raw["conversation"], "conversation")
        chosen, rejected = _text(chosen_raw, "chosen"), _text(rejected_raw, "rejected")
    elif "prompt" in raw and raw["prompt"] is not None:
        p = raw["prompt"]
        conversation = (
            _messages(p, "prompt") if isinstance(p, list) else [{"role": "user", "content": _text(p, "prompt")}]
        )
        chosen, rejected = _text(chosen_raw, "chosen"), _text(rejected_raw, "rejected")
    elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        conv_c, chosen = _split_final(_messages(chosen_raw, "chosen"), "chosen")
        conv_r, rejected = _split_final(_messages(rejected_raw, "rejected"), "rejected")
        if conv_c != conv_r:
            raise RecordError("chosen and rejected carry different conversations")
        conversation = conv_c
    elif (
        isinstance(chosen_raw, str)
        and isinstance(rejected_raw, str)
        and chosen_raw.lstrip(" ").startswith("\n\nHuman:")
    ):
        conv_c, chosen = _split_final(parse_hh(chosen_raw), "chosen")
        conv_r, rejected = _split_final(parse_hh(rejected_raw), "rejected")
        if conv_c != conv_r:
            raise RecordError("HH-RLHF chosen and rejected carry different conversations")
        conversation = conv_c
    else:
        if chosen_raw is None or rejected_raw is None:
            raise RecordError("chosen or rejected is None")
        raise RecordError(
            "unrecognised format: need conversation/prompt + chosen/rejected, message lists, or HH-RLHF text"
        )
    fields = {k: raw[k] for k in _OPTIONAL if k in raw and raw[k] is not None}
    fields.setdefault("source", default_source)
    try:
        return PairRecord(conversation=conversation, chosen=chosen, rejected=rejected, **fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "record"
        raise RecordError(f"{loc}: {first['msg']}") from None


def iter_raw(path: PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, raw record, parse error) for every record of a file; never raises on bad lines."""
    p = as_path(path)
    name = p.name.lower()
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(read_bytes(p)))
        for i, row in enumerate(table.to_pylist()):
            yield i, row, None
        return
    text = read_bytes(p).decode("utf-8", errors="replace")
    if name.endswith(".csv"):
        for i, row in enumerate(csv.DictReader(io.StringIO(text))):
            yield i, _decode_csv_row(row), None
        return
    stripped = text.lstrip()
    if name.endswith(".json") and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield 0, text[:2000], f"invalid JSON file: {e}"
            return
        for i, row in enumerate(data):
            yield i, row, None
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line), None
        except json.JSONDecodeError as e:
            yield i, line, f"invalid JSON line {i + 1}: {e.msg}"


def _decode_csv_row(row: dict) -> dict:
    """CSV cells holding JSON lists (messages, desired_attributes) are decoded; empty cells are None."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v is None or v == "":
            out[k] = None
        elif v.lstrip().startswith(("[", "{")):
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        else:
            out[k] = v
    if isinstance(out.get("flipped"), str):
        out["flipped"] = out["flipped"].lower() == "true"
    return out


def read_pairs(path: PathLike, source: str | None = None) -> ReadResult:
    """Read one file: valid records and quarantine rows (an empty file is one quarantine row)."""
    p = as_path(path)
    src_name = str(p)
    result = ReadResult()
    for index, raw, error in iter_raw(p):
        if error:
            result.quarantine.append(quarantine_row(src_name, index, error, raw))
            continue
        try:
            result.records.append(normalize(raw, source or p.stem))
        except RecordError as e:
            result.quarantine.append(quarantine_row(src_name, index, str(e), raw))
    if result.total == 0:
        result.quarantine.append(quarantine_row(src_name, -1, "empty file: no records", ""))
    return result


def input_files(uri: PathLike) -> list[str]:
    """A file URI, or every supported file under a directory URI (sorted)."""
    p = as_path(uri)
    if p.is_file():
        return [str(p)]
    if not p.exists():
        raise FileNotFoundError(f"input not found: {uri}")
    return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES))
