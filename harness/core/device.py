"""Which torch device a run uses, with one error message for a missing GPU."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when torch sees one, else cpu; "cuda..." without CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return dev
