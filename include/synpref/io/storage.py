"""Object-storage helpers over pathlib-like fsspec paths (UPath, or Airflow's ObjectStoragePath).

The library never imports Airflow: DAG tasks pass ``ObjectStoragePath`` objects (which resolve
``s3://conn_id@bucket/...`` through Airflow connections); the CLI passes URIs, turned into
``UPath`` here (S3 credentials/endpoint from the usual AWS_* env vars).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

PathLike = str | os.PathLike | UPath
PERSISTENT_SCHEMES = ("file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
INPUT_ONLY_SCHEMES = ("hf",)  # read, never a storage root: hf://datasets/<org>/<name>/<path> (huggingface_hub)


class StorageError(ValueError):
    """A storage location or name that cannot be used (one line for the user, never a traceback)."""


_uri_factory: Callable[[str], Any] = UPath


def use_uri_factory(factory: Callable[[str], Any]) -> None:
    """Resolve URI strings with ``factory`` (Airflow tasks pass ``ObjectStoragePath`` so that
    ``s3://conn_id@bucket/...`` strings handed between tasks keep resolving through the connection)."""
    global _uri_factory
    _uri_factory = factory


def as_path(uri: PathLike) -> UPath:
    """A URI or path → a pathlib-like object; plain paths become absolute local paths."""
    if isinstance(uri, Path):
        return UPath(uri.absolute())
    if not isinstance(uri, str) and hasattr(uri, "fs") and hasattr(uri, "open"):
        return uri  # UPath / Airflow ObjectStoragePath: keep (it carries the connection)
    s = str(uri)
    if "://" not in s:
        return UPath(Path(s).absolute())
    if _scheme(s) in INPUT_ONLY_SCHEMES:
        return UPath(_checked_scheme(s))  # no Airflow connection: the Hub's token comes from HF_TOKEN
    return _uri_factory(_checked_scheme(s))


def _scheme(s: str) -> str:
    return s.split("://", 1)[0].lower()


def is_input_only(path: PathLike) -> bool:
    """Whether a path can be read but never written (a Hugging Face Hub dataset)."""
    return _scheme(str(path)) in INPUT_ONLY_SCHEMES


def _checked_scheme(s: str) -> str:
    """Only storage that persists and whose filesystem is installed (``memory://`` keeps nothing)."""
    import fsspec

    scheme = _scheme(s)
    if scheme not in PERSISTENT_SCHEMES + INPUT_ONLY_SCHEMES:
        raise StorageError(
            f"{s}: storage scheme {scheme}:// is not supported (use one of file://, s3://, gs://, az://; "
            "inputs also hf://datasets/...)"
        )
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"{s}: {scheme}:// needs a package that is not installed ({str(e).splitlines()[0]})"
        ) from None
    return s


def uri(path: PathLike) -> str:
    return str(path)


def is_local(path: PathLike) -> bool:
    return as_path(path).protocol in ("", "file", "local")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomic: a reader sees the old file or the new one, never a torn one (a kill -9 leaves no partial file).

    Local files are written under a temporary name and renamed; an object-store put is atomic by itself. A write
    that fails (disk full, read-only storage) is an ``OSError`` naming the path, with nothing left behind."""
    p = as_path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if not is_local(p):
            with p.open("wb") as f:
                f.write(data)
            return
        replace_local(Path(p.path), data)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {p}: {e.strerror or e}") from None


def replace_local(target: Path, data: bytes) -> None:
    """``write_bytes`` for a local path (no URI handling: the fast path of many small files)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bytes(path: PathLike) -> bytes:
    with as_path(path).open("rb") as f:
        return f.read()


PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}


def write_parquet(table: pa.Table, path: PathLike) -> str:
    """Deterministic Parquet bytes (no timestamps), written in one put."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_OPTIONS)
    write_bytes(path, buf.getvalue())
    return uri(path)


@contextmanager
def parquet_writer(path: PathLike, schema: pa.Schema, compression: str = "zstd") -> Iterator[pq.ParquetWriter]:
    """A streaming Parquet writer with ``write_parquet``'s settings (one ``write_table`` = the same bytes).

    Atomic like ``write_bytes``: nothing appears at ``path`` unless the block completes. It writes a local
    temporary file, renamed into place or, for an object store, uploaded in one go when done (so many
    open writers hold no upload buffers)."""
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    local = is_local(p)
    directory = Path(p.path).parent if local else local_scratch("parquet")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, **{**PARQUET_OPTIONS, "compression": compression}) as w:
            yield w
        if local:
            os.chmod(tmp, 0o644)
            os.replace(tmp, p.path)
        else:
            with open(tmp, "rb") as src, p.open("wb") as dst:
                shutil.copyfileobj(src, dst, 8 * 2**20)
    finally:
        Path(tmp).unlink(missing_ok=True)
        if not local:
            cleanup(directory)


def copy_file(src: PathLike, dst: PathLike) -> None:
    """One file copied, atomic at ``dst``: a hard link on a local disk (no bytes copied), a server-side copy
    on an object store."""
    s, d = as_path(src), as_path(dst)
    d.parent.mkdir(parents=True, exist_ok=True)
    if not (is_local(s) and is_local(d)):
        d.fs.copy(s.path, d.path)
        return
    tmp = f"{d.path}.{os.getpid()}.tmp"
    Path(tmp).unlink(missing_ok=True)
    try:
        os.link(s.path, tmp)
    except OSError:
        shutil.copyfile(s.path, tmp)
    os.replace(tmp, d.path)


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    with as_path(path).open("rb") as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def dumps_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def write_json(obj: Any, path: PathLike) -> str:
    write_bytes(path, dumps_json(obj))
    return uri(path)


def read_json(path: PathLike) -> Any:
    return json.loads(read_bytes(path))


def write_jsonl(rows: Iterable[dict], path: PathLike) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    write_bytes(path, data.encode())
    return uri(path)


def list_files(directory: PathLike, suffixes: tuple[str, ...] = ()) -> list[UPath]:
    """Files directly under ``directory`` (sorted, deterministic; dot-files such as a killed write's
    temporary file are not listed); empty when it does not exist."""
    d = as_path(directory)
    if not d.exists():
        return []
    out = [
        p
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and (not suffixes or p.name.endswith(suffixes))
    ]
    return sorted(out, key=lambda p: p.name)


def remove_stale(directory: PathLike, keep: set[str]) -> list[str]:
    """Delete the files and folders directly under ``directory`` whose names are not in ``keep`` (a re-run's
    leftovers from a bigger input); returns the names removed."""
    d = as_path(directory)
    if not d.exists():
        return []
    stale = sorted((p for p in d.iterdir() if p.name not in keep), key=lambda p: p.name)
    for p in stale:
        remove_tree(p) if p.is_dir() else p.unlink()
    return [p.name for p in stale]


def remove_tree(directory: PathLike) -> None:
    d = as_path(directory)
    if d.exists():
        d.fs.rm(d.path, recursive=True)


def download_dir(src: PathLike, local: Path) -> Path:
    """Copy a (remote) directory of files to a local folder, e.g. a model checkpoint."""
    src = as_path(src)
    if is_local(src):
        return Path(src.path)
    local.mkdir(parents=True, exist_ok=True)
    for p in src.rglob("*"):
        if p.is_file():
            rel = p.path[len(src.path) :].lstrip("/")
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            (local / rel).write_bytes(read_bytes(p))
    return local


def upload_dir(local: Path, dst: PathLike) -> str:
    """Copy a local folder (e.g. a saved checkpoint) to ``dst``, replacing what was there."""
    dst = as_path(dst)
    remove_tree(dst)
    for f in sorted(local.rglob("*")):
        if f.is_file():
            write_bytes(dst / f.relative_to(local).as_posix(), f.read_bytes())
    return uri(dst)


def local_scratch(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"synpref-{prefix}-"))


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class WriterLock:
    """One writer per output at a time: ``path`` names who holds it (a process, or an Airflow DAG run).

    The holder may take it again (a retried task, a re-run of the same DAG run); a process on this host that is
    gone, or a DAG run that ``run_state`` says is over, no longer holds it. Anyone else is refused with one line
    naming the holder. Local files are created exclusively (``O_EXCL``); an object store is checked, then put."""

    path: Any
    holder: dict
    run_state: Callable[[str, str], str] | None = None  # (dag_id, run_id) → the DAG run's state

    @classmethod
    def for_process(cls, path: PathLike) -> WriterLock:
        return cls(as_path(path), {"host": socket.gethostname(), "pid": os.getpid()})

    @classmethod
    def for_dag_run(cls, path: PathLike, dag_id: str, run_id: str, run_state: Callable | None = None) -> WriterLock:
        return cls(as_path(path), {"dag_id": dag_id, "run_id": run_id}, run_state)

    def acquire(self) -> None:
        for _ in range(3):
            held = self._read()
            if held is not None and held != self.holder and not self._gone(held):
                raise StorageError(
                    f"{self.path.parent} is being written by {_holder_text(held)}: wait for it to finish "
                    f"(or delete {self.path} if it is not running)"
                )
            if held is not None:
                self.path.unlink(missing_ok=True)
            if self._create():
                return
        raise StorageError(f"{self.path.parent}: another writer took the lock at the same time; try again")

    def release(self) -> None:
        if self._read() == self.holder:
            self.path.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            value = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"unreadable": str(self.path)}
        return value if isinstance(value, dict) else {"unreadable": str(self.path)}

    def _create(self) -> bool:
        data = dumps_json(self.holder)
        if not is_local(self.path):
            if self.path.exists():
                return False
            write_bytes(self.path, data)
            return True
        local = Path(self.path.path)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _gone(self, held: dict) -> bool:
        if "pid" in held:
            return held.get("host") == socket.gethostname() and not _alive(int(held["pid"]))
        if "run_id" in held and self.run_state is not None:
            try:
                return self.run_state(held["dag_id"], held["run_id"]) not in ("queued", "running")
            except Exception:  # the run is unknown (deleted) or its state cannot be asked: it holds nothing
                return True
        return False


def _holder_text(held: dict) -> str:
    if "pid" in held:
        return f"process {held['pid']} on {held.get('host')}"
    if "run_id" in held:
        return f"DAG run {held['dag_id']}/{held['run_id']}"
    return f"an unknown writer ({held})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
