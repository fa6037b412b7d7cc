"""The device choice, made in one place for the trainers, the env and the tools."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when a GPU is visible, else the CPU; 'cuda' without a GPU is an error."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is visible; "
                         "use --device cpu or --device auto")
    return device
