"""Where dsvl keeps its files and how torch runs here: DSVL_HOME, the device, the dtype, quiet logs.

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

from dsvl_cli.models.quiet import quiet_transformers  # noqa: F401  (the loader's, re-exported)

import os
from pathlib import Path

from dsvl_cli.errors import UsageError


def dsvl_home() -> Path:
    """`DSVL_HOME`, else the user cache dir (`$XDG_CACHE_HOME/dsvl` or `~/.cache/dsvl`)."""
    if os.environ.get("DSVL_HOME"):
        return Path(os.environ["DSVL_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dsvl"


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available on this machine (try --device cpu)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine (try --device cpu)")
    return requested


def pick_dtype(requested: str, device: str):
    """auto: bf16 on CUDA when supported (else fp16), fp16 on MPS, fp32 on CPU."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32
