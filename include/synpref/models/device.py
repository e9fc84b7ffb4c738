"""Where models run: the worker's device setting (``SYNPREF_DEVICE``) resolved once, and the precision it gets.

``auto`` (default) is the first CUDA device when torch sees one, else the CPU; ``cpu``, ``cuda`` and
``cuda:N`` force one. bf16 is used where the hardware has it natively: CUDA GPUs that report bf16
support, CPUs with AVX512_BF16/AMX; fp32 elsewhere. A device that is asked for but not visible is a
one-line ``DeviceError``, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import os
import re

from synpref.environment import env
from synpref.settings import DEVICE_ENV, DEVICE_PATTERN, TRAIN_PROCESSES_ENV


class DeviceError(ValueError):
    """The configured device does not exist on this worker (message is one line)."""


def requested_device(value: str | None = None) -> str:
    """The device asked for: ``value`` if given, else the worker's ``SYNPREF_DEVICE``, else ``auto``; validated."""
    wanted = (value or env(DEVICE_ENV) or "auto").strip().lower()
    if not re.fullmatch(DEVICE_PATTERN, wanted):
        raise DeviceError(f"{DEVICE_ENV}={wanted!r} is not a device: use auto, cpu, cuda or cuda:N")
    return wanted


def resolve_device(value: str | None = None) -> str:
    """The concrete torch device string (``cpu``, ``cuda:0``, ...) for the requested device."""
    import torch

    wanted = requested_device(value)
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {wanted!r} was asked for ({DEVICE_ENV}) but torch {torch.__version__} sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    index = 0 if wanted in ("auto", "cuda") else int(wanted.split(":")[1])
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device cuda:{index} was asked for but this worker sees {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{index}"


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 (AVX512_BF16/AMX): bf16 inference is then ~2.8× faster here."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def bf16_on(device: str) -> bool:
    """Whether ``device`` (a resolved device) computes in bf16 natively."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


def visible_gpus() -> int:
    """CUDA devices this worker sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_processes(device: str) -> int:
    """Data-parallel processes to train on: ``SYNPREF_TRAIN_PROCESSES`` if set, else every visible GPU when the
    device setting is ``auto``/``cuda`` on a CUDA worker, else 1 (a pinned ``cuda:N`` trains on that GPU only)."""
    value = env(TRAIN_PROCESSES_ENV).strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise DeviceError(f"{TRAIN_PROCESSES_ENV}={value!r} is not a number of processes (1 or more)")
        return int(value)
    return visible_gpus() if device.startswith("cuda") and requested_device() in ("auto", "cuda") else 1


def in_launched_process() -> bool:
    """True inside a torchrun/accelerate-launched training process."""
    return "LOCAL_RANK" in os.environ


def pinned_gpu(device: str) -> str | None:
    """The GPU index when the setting pins one (``cuda:N``) and ``device`` is it, else None."""
    return device.split(":")[1] if device.startswith("cuda") and requested_device().startswith("cuda:") else None
