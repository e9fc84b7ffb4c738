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
import io
import json
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

from .schema import ATTRIBUTE_FIELDS, PairRecord
from .storage import PathLike, as_path, read_bytes

FORMATS = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSIONS = (".gz", ".zst")
SUFFIXES = FORMATS + tuple(f + c for f in (".jsonl", ".json", ".csv") for c in COMPRESSIONS)
MAX_RECORD_BYTES = 16 * 2**20  # one JSON line / CSV row / Parquet row, as text
MAX_DEPTH = 32  # a record is at most ~4 levels deep (record → messages → message → content)
MAX_NUMBER_CHARS = 64
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_OPTIONAL = ("source", "source_id", "provenance", "flipped", "round", *ATTRIBUTE_FIELDS)
FILE_LEVEL = -1  # record_index of a quarantine row about a whole file (or its unreadable rest)


class RecordError(ValueError):
    """A record that cannot become a pair; the message is the quarantine reason."""


class InputError(ValueError):
    """An input that cannot be used at all (missing, nothing readable): a one-line message for the user."""


@dataclass
class ReadResult:
    records: list[PairRecord] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)

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


def normalize(raw: Any, default_source: str) -> PairRecord:
    """One raw record (dict) in any supported format → a validated PairRecord (or RecordError).

    A ``pair_id`` in the input is never trusted: the id is computed from the content, and a supplied id
    that differs is kept as ``source_id``.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"record must be an object, got {type(raw).__name__}")
    _check_value(raw)
    for key in ("chosen", "rejected"):
        if key not in raw:
            raise RecordError(f"missing field '{key}'")
    conversation, chosen, rejected = _conversation(raw)
    fields = {k: raw[k] for k in _OPTIONAL if raw.get(k) is not None}
    fields.setdefault("source", default_source)
    if isinstance(fields.get("flipped"), str):
        fields["flipped"] = {"true": True, "false": False}.get(fields["flipped"].strip().lower(), fields["flipped"])
    if raw.get("pair_id") not in (None, ""):
        fields["pair_id"] = str(raw["pair_id"])  # PairRecord recomputes it and keeps a differing one as source_id
    try:
        return PairRecord(conversation=conversation, chosen=chosen, rejected=rejected, **fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "record"
        raise RecordError(f"{loc}: {first['msg']}") from None


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


def _decompress(data: bytes, name: str) -> tuple[bytes, str | None]:
    """(bytes, problem): a truncated or corrupt stream keeps what decoded before the damage."""
    if name.endswith(".gz"):
        d = zlib.decompressobj(wbits=47)
        try:
            out = d.decompress(data)
        except zlib.error as e:
            return b"", f"corrupt gzip stream: {e}"
        return out, None if d.eof else "gzip stream truncated: the records after the damage are lost"
    if name.endswith(".zst"):
        try:
            return pa.input_stream(pa.py_buffer(data), compression="zstd").read(), None
        except (OSError, pa.ArrowException) as e:
            return b"", f"corrupt zstd stream: {e}"
    return data, None


def _utf8(data: bytes) -> tuple[bytes, str | None]:
    """A UTF-16 file (it starts with its byte-order mark) → UTF-8 bytes; (b"", problem) when it is not UTF-16."""
    if not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data, None
    try:
        return data.decode("utf-16").encode("utf-8", "surrogatepass"), None
    except UnicodeDecodeError as e:
        return b"", f"invalid UTF-16 at byte {e.start}"


def _text_of(data: bytes) -> str:
    """Bytes → text: a UTF-8 BOM dropped, bytes that are not UTF-8 kept as lone surrogates (quarantined later)."""
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def _json_lines(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    for i, line in enumerate(data.split(b"\n")):
        text = _text_of(line) if i == 0 else line.decode("utf-8", "surrogateescape")
        text = text.removesuffix("\r")
        if not text.strip():
            continue
        bad = _SURROGATE.search(text)
        if bad:
            yield i, text, f"line {i + 1}: bytes that are not UTF-8 at character {bad.start()}"
            continue
        try:
            yield i, loads(text), None
        except RecordError as e:
            yield i, text, f"line {i + 1}: {e}"


def _json_document(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """A ``.json`` file: a list of records, one record, or (failing that) JSON lines."""
    text = _text_of(data)
    head = text.lstrip()
    if not head.startswith(("[", "{")):
        yield from _json_lines(data)
        return
    try:  # bytes that are not UTF-8 quarantine the records holding them (``normalize``), not the file
        doc = _guarded_json(text)
    except (RecordError, ValueError, RecursionError) as e:
        if head.startswith("{"):  # perhaps JSON lines in a .json file
            yield from _json_lines(data)
            return
        msg = f"{e.msg} at character {e.pos}" if isinstance(e, json.JSONDecodeError) else str(e) or "nested too deeply"
        yield FILE_LEVEL, text, f"invalid JSON file: {msg}"
        return
    for i, row in enumerate(doc if isinstance(doc, list) else [doc]):
        yield i, row, None


def _csv_rows(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """CSV with a header row; cells holding JSON (messages, desired_attributes) are decoded."""
    csv.field_size_limit(MAX_RECORD_BYTES)
    reader = csv.reader(io.StringIO(_text_of(data), newline=""))
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


def _parquet_rows(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        yield FILE_LEVEL, "", f"not a readable Parquet file: {e}"
        return
    index = 0
    for group in range(pf.num_row_groups):
        try:
            rows = pf.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            yield FILE_LEVEL, "", f"Parquet row group {group} unreadable after {index} rows: {e}"
            return
        for row in rows:
            yield index, row, None
            index += 1


def iter_raw(path: PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, raw record, problem) for every record of a file; never raises for the file's content."""
    p = as_path(path)
    name = p.name.lower()
    try:
        data = read_bytes(p)
    except OSError as e:
        yield FILE_LEVEL, "", f"cannot read the file: {type(e).__name__}: {e}"
        return
    data, problem = _decompress(data, name)
    if not problem:
        data, problem = _utf8(data)
    base = name.removesuffix(".gz").removesuffix(".zst")
    if base.endswith(".parquet"):
        yield from _parquet_rows(data)
    elif base.endswith(".csv"):
        yield from _csv_rows(data)
    elif base.endswith(".json"):
        yield from _json_document(data)
    else:
        yield from _json_lines(data)
    if problem:
        yield FILE_LEVEL, "", problem


def read_pairs(path: PathLike, source: str | None = None) -> ReadResult:
    """Read one file: valid records and quarantine rows (an empty file is one quarantine row)."""
    p = as_path(path)
    src_name = str(p)
    default_source = source or p.name.split(".")[0]
    result = ReadResult()
    for index, raw, error in iter_raw(p):
        if error:
            result.quarantine.append(quarantine_row(src_name, index, error, raw))
            continue
        try:
            result.records.append(normalize(raw, default_source))
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


def _classify(scan: InputScan, path: Any, name: str) -> None:
    if name.startswith("."):
        scan.skip(path, "hidden file")
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
    if not p.exists():
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


def input_files(uri: PathLike) -> list[str]:
    """The readable files of a file or directory URI (sorted); see ``scan_inputs``."""
    return scan_inputs(uri).files
