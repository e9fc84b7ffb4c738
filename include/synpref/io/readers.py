"""Readers for the formats users have → canonical PairRecords, or quarantine rows with a reason.

Formats (detected per record):
- TRL conversational: ``chosen``/``rejected`` are full message lists (Skywork-Reward-Preference-80K);
- prompt/chosen/rejected: strings (or TRL's explicit-prompt form with message lists);
- HH-RLHF: ``chosen``/``rejected`` strings of ``\\n\\nHuman: … \\n\\nAssistant: …`` text;
- ours: ``conversation`` message list + ``chosen``/``rejected`` strings (+ attributes, provenance).
Files: ``.jsonl``, ``.json`` (a list, one object or JSON lines), ``.parquet``, ``.csv``; JSONL/JSON/CSV
may be compressed (``.gz``, ``.zst``).

Nothing in a file stops a run: every failure becomes a quarantine row naming the file, the record
(line or row number, ``-1`` for the whole file) and the problem. JSON lines are split at ``\\n`` only
(U+2028/U+2029/NEL are legal inside JSON strings); a UTF-8 byte-order mark is dropped; bytes that are
not UTF-8 and escaped lone surrogates quarantine their record instead of entering the pool as U+FFFD;
records are bounded in size (``MAX_RECORD_BYTES``), nesting (``MAX_DEPTH``) and number length
(``MAX_NUMBER_CHARS``).
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from synpref.io.storage import PathLike, as_path, is_input_only
from synpref.schema import ATTRIBUTE_FIELDS, ENCODE, PAIR_SCHEMA, PairRecord, pair_keys, pair_keys_of

FORMATS = (".jsonl", ".json", ".parquet", ".csv", ".arrow")  # .arrow: a `datasets` save_to_disk shard
COMPRESSIONS = (".gz", ".zst")
SUFFIXES = FORMATS + tuple(f + c for f in (".jsonl", ".json", ".csv") for c in COMPRESSIONS)
MAX_RECORD_BYTES = 16 * 2**20  # one JSON line / CSV row / Parquet row, as text
MAX_DEPTH = 32  # a record is at most ~4 levels deep (record → messages → message → content)
MAX_NUMBER_CHARS = 64
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_OPTIONAL = ("source", "source_id", "provenance", "flipped", "round", *ATTRIBUTE_FIELDS)
SPLIT_BYTES = 64 * 2**20  # a JSON-lines file larger than this is read by several map tasks
READ_BLOCK = 2**20  # bytes per read from a file or a decompressor
PARQUET_BATCH = 8192  # rows per batch read from a Parquet row group
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
FILE_LEVEL = -1  # record_index of a quarantine row about a whole file (or its unreadable rest)


class RecordError(ValueError):
    """A record that cannot become a pair; the message is the quarantine reason."""


class InputError(ValueError):
    """An input that cannot be used at all (missing, nothing readable): a one-line message for the user."""


@dataclass
class ReadResult:
    records: list[PairRecord] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    repaired: list[dict] = field(default_factory=list)  # kept records with what was dropped or cleaned, and why

    @property
    def total(self) -> int:
        return len(self.records) + len(self.quarantine)


def quarantine_row(source_file: str, index: int, reason: str, raw: Any) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "backslashreplace")
    text = raw if isinstance(raw, str) else _dump(raw)
    return {"source_file": source_file, "record_index": index, "reason": reason, "raw": _clean(text[:2000])}


def _dump(raw: Any) -> str:
    try:
        return json.dumps(raw, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return repr(raw)[:2000]


def _clean(text: str) -> str:
    """Quarantine ``raw`` must itself be storable: lone surrogates are shown escaped."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _Screened(dict):
    """A record whose JSON text has no surrogate escape and too few brackets to nest past MAX_DEPTH:
    ``_check_value`` has nothing to find in it (the fast path of large JSON-lines files)."""


# --- records → PairRecord ----------------------------------------------------------------------------


def _check_value(value: Any, what: str = "record", depth: int = 0) -> None:
    """Depth bound and no lone surrogates anywhere in a raw record (both break the Arrow writer)."""
    if depth > MAX_DEPTH:
        raise RecordError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        bad = _SURROGATE.search(value)
        if bad:
            raise RecordError(
                f"{what}: invalid text at character {bad.start()}: "
                f"\\u{ord(bad.group()):04x} (bytes that are not UTF-8, or an escaped lone surrogate)"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_value(k, what, depth + 1)
            _check_value(v, f"{k}" if what == "record" else f"{what}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{what}[{i}]", depth + 1)


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


def _conversation(raw: dict) -> tuple[list[dict], str, str]:
    chosen_raw, rejected_raw = raw["chosen"], raw["rejected"]
    if raw.get("conversation") is not None:
        return (
            _messages(raw["conversation"], "conversation"),
            _text(chosen_raw, "chosen"),
            _text(rejected_raw, "rejected"),
        )
    if raw.get("prompt") is not None:
        p = raw["prompt"]
        conversation = (
            _messages(p, "prompt") if isinstance(p, list) else [{"role": "user", "content": _text(p, "prompt")}]
        )
        return conversation, _text(chosen_raw, "chosen"), _text(rejected_raw, "rejected")
    if isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        conv_c, chosen = _split_final(_messages(chosen_raw, "chosen"), "chosen")
        conv_r, rejected = _split_final(_messages(rejected_raw, "rejected"), "rejected")
        if conv_c != conv_r:
            raise RecordError("chosen and rejected carry different conversations")
        return conv_c, chosen, rejected
    if (
        isinstance(chosen_raw, str)
        and isinstance(rejected_raw, str)
        and chosen_raw.lstrip(" ").startswith("\n\nHuman:")
    ):
        conv_c, chosen = _split_final(parse_hh(chosen_raw), "chosen")
        conv_r, rejected = _split_final(parse_hh(rejected_raw), "rejected")
        if conv_c != conv_r:
            raise RecordError("HH-RLHF chosen and rejected carry different conversations")
        return conv_c, chosen, rejected
    if chosen_raw is None or rejected_raw is None:
        raise RecordError("chosen or rejected is None")
    raise RecordError(
        "unrecognised format: need conversation/prompt + chosen/rejected, message lists, or HH-RLHF text"
    )


def normalize(raw: Any, default_source: str, repairs: list[str] | None = None) -> PairRecord:
    """One raw record (dict) in any supported format → a validated PairRecord (or RecordError).

    A ``pair_id`` in the input is never trusted: the id is computed from the content, and a supplied id
    that differs is kept as ``source_id``. With ``repairs`` (a list), a malformed optional field
    (``DROPPABLE``: the attributes, source_id, round) is dropped instead of losing the pair, and why is appended
    to it.
    """
    return _validated(*_fields(raw, default_source, repairs), repairs)


def _fields(raw: Any, default_source: str, repairs: list[str] | None = None) -> tuple[list[dict], str, str, dict]:
    """A raw record's conversation, chosen, rejected and optional fields (format detected; RecordError); NUL
    characters are removed from the texts (noted in ``repairs``)."""
    if not isinstance(raw, dict):
        raise RecordError(f"record must be an object, got {type(raw).__name__}")
    if not isinstance(raw, _Screened):
        _check_value(raw)
    for key in ("chosen", "rejected"):
        if key not in raw:
            raise RecordError(f"missing field '{key}'")
    conversation, chosen, rejected = _without_nul(*_conversation(raw), repairs)
    fields = {k: raw[k] for k in _OPTIONAL if raw.get(k) is not None}
    fields.setdefault("source", default_source)
    if isinstance(fields.get("flipped"), str):
        fields["flipped"] = {"true": True, "false": False}.get(fields["flipped"].strip().lower(), fields["flipped"])
    if raw.get("pair_id") not in (None, ""):
        fields["pair_id"] = str(raw["pair_id"])  # PairRecord recomputes it and keeps a differing one as source_id
    return conversation, chosen, rejected, fields


def _without_nul(
    conversation: list[dict], chosen: str, rejected: str, repairs: list[str] | None
) -> tuple[list[dict], str, str]:
    """The texts without NUL characters (a corrupted or binary export: no text needs one, and PostgreSQL, Label
    Studio and tokenizers choke on them); each text that held any is noted in ``repairs``."""

    def clean(text: Any, where: str) -> Any:
        if not isinstance(text, str) or "\x00" not in text:
            return text
        if repairs is not None:
            repairs.append(f"removed {text.count(chr(0))} NUL character(s) from {where}")
        return text.replace("\x00", "")

    conversation = [
        {**m, "content": clean(m.get("content"), f"conversation[{i}]")} if isinstance(m, dict) else m
        for i, m in enumerate(conversation)
    ]
    return conversation, clean(chosen, "chosen"), clean(rejected, "rejected")


DROPPABLE = ("source_id", "round", *ATTRIBUTE_FIELDS)  # optional fields a pair does not need


def _validated(
    conversation: list[dict], chosen: str, rejected: str, fields: dict, repairs: list[str] | None = None
) -> PairRecord:
    """PairRecord's validation (RecordError naming the first problem); with ``repairs``, malformed droppable
    fields are dropped (each noted in ``repairs``) as long as the pair itself is valid."""
    while True:
        try:
            return PairRecord(conversation=conversation, chosen=chosen, rejected=rejected, **fields)
        except ValidationError as e:
            errors = e.errors()
            bad = {str(err["loc"][0]) for err in errors if err["loc"]}
            if repairs is None or not bad or not all(f in DROPPABLE and f in fields for f in bad):
                first = errors[0]
                loc = ".".join(str(x) for x in first["loc"]) or "record"
                raise RecordError(f"{loc}: {first['msg']}") from None
            for err in errors:
                repairs.append(f"dropped {err['loc'][0]}: {err['msg']}"[:200])
            fields = {k: v for k, v in fields.items() if k not in bad}


_PAIR_FIELDS = tuple(PAIR_SCHEMA.names)
_FAST_FIELDS = {"source": str, "source_id": str, "round": str, "flipped": bool, "pair_id": str}


def normalize_row(raw: Any, default_source: str, repairs: list[str] | None = None) -> tuple[dict, str]:
    """(``normalize(raw).model_dump()``, content key) without building the model when the record is plainly
    valid (see ``schema.pair_keys``).

    The fast path accepts only what PairRecord accepts unchanged (non-empty texts, a final user turn,
    distinct responses, plain optional fields); anything else goes through PairRecord for its verdict."""
    conversation, chosen, rejected, fields = _fields(raw, default_source, repairs)
    plain = all(type(v) is _FAST_FIELDS.get(k) for k, v in fields.items()) and conversation[-1]["role"] == "user"
    texts = [m["content"] for m in conversation]
    texts += (chosen, rejected)
    if not plain or chosen == rejected or any(not t or t.isspace() for t in texts):  # isspace: strip() == ""
        row = _validated(conversation, chosen, rejected, fields, repairs).model_dump()
        return row, pair_keys(row["conversation"], row["chosen"], row["rejected"], row["flipped"])[1]
    flipped = fields.get("flipped", False)
    pair_id, content = pair_keys_of(ENCODE(conversation), chosen, rejected, flipped)  # plain role/content dicts
    source_id = fields.get("source_id")
    if fields.get("pair_id") and fields["pair_id"] != pair_id and source_id is None:
        source_id = fields["pair_id"]
    row = dict.fromkeys(_PAIR_FIELDS)
    row |= {
        "pair_id": pair_id,
        "conversation": conversation,
        "chosen": chosen,
        "rejected": rejected,
        "source": fields["source"],
        "provenance": "unverified",
        "flipped": flipped,
        "round": fields.get("round"),
        "source_id": source_id,
    }
    return row, content


# --- files → raw records -------------------------------------------------------------------------------


def _bounded_number(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise RecordError(f"a number of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _no_constant(name: str) -> Any:
    raise RecordError(f"{name} is not valid JSON")


def _guarded_json(text: str) -> Any:
    """``json.loads`` refusing long numbers and NaN/Infinity (RecordError)."""
    return json.loads(text, parse_int=_bounded_number, parse_float=_bounded_number, parse_constant=_no_constant)


def loads(text: str) -> Any:
    """``json.loads`` with the reader's guards; every failure is a RecordError naming the problem."""
    if len(text) > MAX_RECORD_BYTES:
        raise RecordError(f"record of {len(text)} characters is over the limit of {MAX_RECORD_BYTES}")
    try:
        return _guarded_json(text)
    except RecordError:
        raise
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} at character {e.pos}") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    except ValueError as e:
        raise RecordError(f"invalid JSON: {e}") from None


def _stream_problem(e: BaseException, name: str) -> str:
    """What a broken compressed stream costs: the records after the damage."""
    kind = "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else "file"
    if isinstance(e, EOFError):
        return f"{kind} stream truncated: the records after the damage are lost"
    return f"corrupt {kind} stream: {e}"


STREAM_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)


class _Raw(io.RawIOBase):
    """Any object with ``read(n)`` as a raw stream, so ``io.BufferedReader`` gives it C-speed ``readline``.

    A broken (compressed) stream ends at the damage: what decoded before it is read as usual, and the
    error is kept in ``error`` for the caller to record."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None
        self.read_some = getattr(f, "read1", f.read)  # read1: what decoded before a damaged block still comes

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.error is not None:
            return 0
        try:
            data = self.read_some(len(b))
        except STREAM_ERRORS as e:
            self.error = e
            return 0
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def _open(f: Any, name: str) -> io.BufferedReader:
    """A binary file object → a buffered, decompressing stream (``.gz``, ``.zst``), read in 1 MiB blocks."""
    if name.endswith(".gz"):
        f = gzip.GzipFile(fileobj=f, mode="rb")
    elif name.endswith(".zst"):
        f = pa.CompressedInputStream(pa.PythonFile(f, mode="r"), "zstd")
    return io.BufferedReader(_Raw(f), READ_BLOCK)


def _read_all(stream: io.BufferedReader, name: str) -> tuple[bytes, str | None]:
    """The whole (decompressed) content, and the problem when the stream broke (what decoded is kept)."""
    data, error = stream.read(), stream.raw.error
    return data, None if error is None else _stream_problem(error, name)


def _utf8(data: bytes) -> tuple[bytes, str | None]:
    """A UTF-16 file (it starts with its byte-order mark) → UTF-8 bytes; (b"", problem) when it is not UTF-16."""
    if not data.startswith(UTF16_BOMS):
        return data, None
    try:
        return data.decode("utf-16").encode("utf-8", "surrogatepass"), None
    except UnicodeDecodeError as e:
        return b"", f"invalid UTF-16 at byte {e.start}"


def _text_of(data: bytes) -> str:
    """Bytes → text: a UTF-8 BOM dropped, bytes that are not UTF-8 kept as lone surrogates (quarantined later)."""
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def _lines(stream: Any, first: int = 0, limit: int | None = None) -> Iterator[tuple[int, bytes | int]]:
    """(line index, line without ``\\n``) split at ``\\n`` only, numbered from ``first``, the lines that
    start within ``limit`` bytes; a line over MAX_RECORD_BYTES comes as its length in bytes (an int) and
    is never held in memory whole."""
    i, pos = first, 0
    while (limit is None or pos < limit) and (line := stream.readline(MAX_RECORD_BYTES + 1)):
        pos += len(line)
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while True:  # the rest of the line, a block at a time
                rest = stream.readline(READ_BLOCK)
                pos += len(rest)
                size += len(rest.removesuffix(b"\n"))
                if not rest or rest.endswith(b"\n"):
                    break
            yield i, size
        else:
            yield i, line.removesuffix(b"\n")
        i += 1


def splits(path: PathLike) -> list[tuple[int, int] | None]:
    """Byte ranges a file is read in (each by its own map task): an uncompressed UTF-8 JSON-lines file over
    ``SPLIT_BYTES`` is cut into about equal ranges (a line belongs to the range it starts in); anything
    else is one piece (``None``)."""
    p = as_path(path)
    if not p.name.lower().endswith(".jsonl"):
        return [None]
    size = p.stat().st_size
    if size <= SPLIT_BYTES:
        return [None]
    with _open_file(p) as f:
        head = f.read(READ_BLOCK)
        if head.startswith(UTF16_BOMS) or _starts_array(head):
            return [None]
    n = math.ceil(size / SPLIT_BYTES)
    return [(size * k // n, size * (k + 1) // n) for k in range(n)]


def _seek_line(f: Any, start: int) -> tuple[int, int]:
    """Position ``f`` at the first line starting at or after byte ``start``: (its line index, its offset)."""
    count, remaining = 0, start
    f.seek(0)
    while remaining > 0 and (block := f.read(min(READ_BLOCK, remaining))):
        count += block.count(b"\n")
        remaining -= len(block)
    if start == 0:
        return 0, 0
    f.seek(start - 1)
    if f.read(1) == b"\n":
        return count, start
    rest = f.readline(READ_BLOCK)  # the rest of a line that started in the previous range
    while rest and not rest.endswith(b"\n"):
        rest = f.readline(READ_BLOCK)
    return count + 1, f.tell()


def _json_lines(stream: Any, first: int = 0, limit: int | None = None) -> Iterator[tuple[int, Any, str | None]]:
    for i, line in _lines(stream, first, limit):
        if isinstance(line, int):
            yield i, "", f"line {i + 1}: record of {line} bytes is over the limit of {MAX_RECORD_BYTES}"
            continue
        try:  # strict UTF-8 cannot hold a lone surrogate: only a line that fails it needs the search
            text = (line.removeprefix(b"\xef\xbb\xbf") if i == 0 else line).decode("utf-8")
        except UnicodeDecodeError:
            text = _text_of(line) if i == 0 else line.decode("utf-8", "surrogateescape")
            bad = _SURROGATE.search(text)
            if bad:
                yield i, text.removesuffix("\r"), f"line {i + 1}: bytes that are not UTF-8 at character {bad.start()}"
                continue
        text = text.removesuffix("\r")
        if not text.strip():
            continue
        try:
            raw = loads(text)
        except RecordError as e:
            yield i, text, f"line {i + 1}: {e}"
            continue
        screened = isinstance(raw, dict) and ("\\u" not in text or not _SURROGATE_ESCAPE.search(text))
        yield i, _Screened(raw) if screened and text.count("[") + text.count("{") <= MAX_DEPTH else raw, None


def _json_document(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """A ``.json`` file (read whole): a list of records, one record, or (failing that) JSON lines."""
    text = _text_of(data)
    head = text.lstrip()
    if not head.startswith(("[", "{")):
        yield from _json_lines(io.BytesIO(data))
        return
    try:  # bytes that are not UTF-8 quarantine the records holding them (``normalize``), not the file
        doc = _guarded_json(text)
    except (RecordError, ValueError, RecursionError) as e:
        if head.startswith("{"):  # perhaps JSON lines in a .json file
            yield from _json_lines(io.BytesIO(data))
            return
        msg = f"{e.msg} at character {e.pos}" if isinstance(e, json.JSONDecodeError) else str(e) or "nested too deeply"
        yield FILE_LEVEL, text, f"invalid JSON file: {msg}"
        return
    for i, row in enumerate(doc if isinstance(doc, list) else [doc]):
        yield i, row, None


def _csv_rows(stream: Any) -> Iterator[tuple[int, Any, str | None]]:
    """CSV with a header row; cells holding JSON (messages, desired_attributes) are decoded."""
    csv.field_size_limit(MAX_RECORD_BYTES)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield FILE_LEVEL, "", f"unreadable CSV header: {e}"
        return
    if len(set(header)) != len(header):
        yield FILE_LEVEL, header, "CSV header repeats a column name"
        return
    index = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield index, "", f"CSV row {index + 1} (line {reader.line_num}): {e}"
            index += 1
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        text = ",".join(cells)
        if len(cells) != len(header):
            yield (
                index,
                text,
                f"CSV row {index + 1} (line {reader.line_num}): {len(cells)} cells, header has {len(header)}",
            )
        elif _SURROGATE.search(text):
            yield index, text, f"CSV row {index + 1} (line {reader.line_num}): bytes that are not UTF-8"
        else:
            try:
                yield index, _decode_csv_row(dict(zip(header, cells))), None
            except RecordError as e:
                yield index, text, f"CSV row {index + 1}: {e}"
        index += 1


def _decode_csv_row(row: dict) -> dict:
    """CSV cells holding JSON lists (messages, desired_attributes) are decoded; empty cells are None."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v == "":
            out[k] = None
        elif v.lstrip().startswith(("[", "{")):
            try:
                out[k] = loads(v)
            except RecordError:
                out[k] = v
        else:
            out[k] = v
    return out


def _parquet_rows(source: Any) -> Iterator[tuple[int, Any, str | None]]:
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowException, OSError, ValueError) as e:
        yield FILE_LEVEL, "", f"not a readable Parquet file: {e}"
        return
    index = 0
    for group in range(pf.num_row_groups):
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=[group]):
                for row in batch.to_pylist():
                    yield index, row, None
                    index += 1
        except (pa.ArrowException, OSError, ValueError) as e:
            yield FILE_LEVEL, "", f"Parquet row group {group} unreadable after {index} rows: {e}"
            return


def _arrow_rows(source: Any) -> Iterator[tuple[int, Any, str | None]]:
    """The rows of an Arrow IPC stream (what ``datasets.Dataset.save_to_disk`` writes), batch by batch."""
    index = 0
    try:
        for batch in pa.ipc.open_stream(source):
            for row in batch.to_pylist():
                yield index, row, None
                index += 1
    except (pa.ArrowException, OSError, ValueError) as e:
        yield FILE_LEVEL, "", f"not a readable Arrow stream (datasets save_to_disk) after {index} rows: {e}"


def _open_file(p: Any) -> Any:
    return open(p.path, "rb") if p.protocol in ("", "file", "local") else p.open("rb")


def iter_raw(path: PathLike, split: tuple[int, int] | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, raw record, problem) for every record of a file (or of one of its ``splits``); never
    raises for the file's content.

    JSON lines, CSV and Parquet are streamed (memory bounded by one record / one batch, whatever the
    file's size); a ``.json`` document and a UTF-16 file are read whole."""
    p = as_path(path)
    name = p.name.lower()
    base = name.removesuffix(".gz").removesuffix(".zst")
    try:
        f = _open_file(p)
    except OSError as e:
        yield FILE_LEVEL, "", f"cannot read the file: {type(e).__name__}: {e}"
        return
    with f:
        if split is not None:
            first, offset = _seek_line(f, split[0])
            yield from _json_lines(io.BufferedReader(_Raw(f), READ_BLOCK), first, split[1] - offset)
            return
        if name.endswith(".parquet"):
            yield from _parquet_rows(f)
            return
        if name.endswith(".arrow"):
            yield from _arrow_rows(f)
            return
        try:
            stream = _open(f, name)
        except STREAM_ERRORS as e:
            yield FILE_LEVEL, "", _stream_problem(e, name)
            return
        raw = stream.raw
        array = base.endswith(".jsonl") and _starts_array(stream.peek(READ_BLOCK))
        if stream.peek(2)[:2].startswith(UTF16_BOMS) or base.endswith(".json") or array:
            data, problem = _read_all(stream, name)
            if not problem:
                data, problem = _utf8(data)
            yield from _records(".json" if array else base, io.BytesIO(data), data)
        else:
            yield from _records(base, stream)
            problem = None if raw.error is None else _stream_problem(raw.error, name)
        if problem:
            yield FILE_LEVEL, "", problem


def _starts_array(head: bytes) -> bool:
    """A ``.jsonl`` file that is one JSON array (on one line or several) — its records cannot be lines, which are
    objects — is read as a JSON document."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _records(base: str, stream: Any, data: bytes = b"") -> Iterator[tuple[int, Any, str | None]]:
    if base.endswith(".csv"):
        return _csv_rows(stream)
    return _json_document(data) if base.endswith(".json") else _json_lines(stream)


def read_pairs(path: PathLike, source: str | None = None) -> ReadResult:
    """Read one file: valid records, quarantine rows (an empty file is one quarantine row) and, for records kept
    without a malformed optional field or with NUL characters removed, what was done (``repaired``)."""
    p = as_path(path)
    src_name = str(p)
    default_source = source or p.name.split(".")[0]
    result = ReadResult()
    for index, raw, error in iter_raw(p):
        if error:
            result.quarantine.append(quarantine_row(src_name, index, error, raw))
            continue
        try:
            repairs: list[str] = []
            result.records.append(normalize(raw, default_source, repairs))
            if repairs:
                result.repaired.append(quarantine_row(src_name, index, "; ".join(repairs), raw))
        except RecordError as e:
            result.quarantine.append(quarantine_row(src_name, index, str(e), raw))
        except (ValueError, TypeError, RecursionError) as e:  # a reader bug must not stop the line either
            result.quarantine.append(quarantine_row(src_name, index, f"unreadable record: {type(e).__name__}", raw))
    if result.total == 0:
        result.quarantine.append(quarantine_row(src_name, FILE_LEVEL, "empty file: no records", ""))
    return result


# --- input discovery -----------------------------------------------------------------------------------


@dataclass
class InputScan:
    """The files a run reads, and every other path it saw with why it was skipped."""

    files: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, path: Any, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})


DATASETS_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json")  # written by save_to_disk


def _classify(scan: InputScan, path: Any, name: str) -> None:
    if name.startswith("."):
        scan.skip(path, "hidden file")
    elif name in DATASETS_METADATA and any(
        path.parent.glob("*.arrow" if name != "dataset_dict.json" else "*/*.arrow")
    ):
        scan.skip(path, "metadata of a datasets save_to_disk directory (its .arrow files are the data)")
    elif name.lower().endswith(SUFFIXES):
        scan.files.append(str(path))
    else:
        scan.skip(path, f"unsupported file type (supported: {', '.join(SUFFIXES)})")


def _walk_local(directory: Path, scan: InputScan, seen: set[str]) -> None:
    real = os.path.realpath(directory)
    if real in seen:
        scan.skip(directory, "symlink loop: directory already visited")
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        scan.skip(directory, f"cannot list the directory: {e.strerror or e}")
        return
    for entry in entries:
        _walk_entry(entry, scan, seen)


def _walk_entry(entry: os.DirEntry, scan: InputScan, seen: set[str]) -> None:
    path = Path(entry.path)
    try:
        is_dir, is_file = entry.is_dir(), entry.is_file()
    except OSError as e:  # a symlink loop raises ELOOP here
        scan.skip(path, "symlink loop" if e.errno == errno.ELOOP else f"cannot inspect: {e.strerror or e}")
        return
    if is_dir:
        if entry.name.startswith("."):
            scan.skip(path, "hidden directory")
        else:
            _walk_local(path, scan, seen)
    elif is_file:
        _classify(scan, path, entry.name)
    elif entry.is_symlink():
        try:
            os.stat(path)
            scan.skip(path, "symlink to something that is neither a file nor a directory")
        except OSError as e:
            scan.skip(
                path, "symlink loop" if e.errno == errno.ELOOP else "dangling symlink: its target does not exist"
            )
    else:
        scan.skip(path, "not a regular file (device, pipe or socket)")


def scan_inputs(uri: PathLike) -> InputScan:
    """The readable files of a file or directory URI (sorted), and the skipped paths with reasons.

    Raises InputError when the input does not exist or holds no readable file."""
    p = as_path(uri)
    scan = InputScan()
    local = p.protocol in ("", "file", "local")
    if local and os.path.islink(p.path) and not os.path.exists(p.path):
        raise InputError(f"input {uri} is a dangling or looping symlink")
    if is_input_only(uri):
        _check_hub_reachable(str(uri))
    try:
        found = p.exists()
    except Exception as e:  # a remote store that cannot be reached: one line, never a traceback
        raise InputError(
            f"input {uri} cannot be reached: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not found:
        raise InputError(f"input not found: {uri}")
    if p.is_file():
        _classify(scan, p if not local else Path(p.path), p.name)
    elif local:
        _walk_local(Path(p.path), scan, set())
    else:
        for f in sorted(p.rglob("*"), key=str):
            if f.is_file():
                _classify(scan, f, f.name)
    if not scan.files:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in scan.skipped[:3])
        raise InputError(f"no readable input file in {uri}" + (f" ({why})" if why else " (it is empty)"))
    scan.files = sorted(str(as_path(f)) for f in scan.files)
    return scan


def _check_hub_reachable(uri: str) -> None:
    """A Hugging Face Hub input needs the network: offline (``HF_HUB_OFFLINE=1``, as ``scripts/env.sh`` sets for the
    packaged models) it is refused in one line naming the URI."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"input {uri}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1): run with HF_HUB_OFFLINE=0 where "
            "the network allows, or download the dataset first (datasets save_to_disk, or its Parquet files)"
        )


def input_files(uri: PathLike) -> list[str]:
    """The readable files of a file or directory URI (sorted); see ``scan_inputs``."""
    return scan_inputs(uri).files
