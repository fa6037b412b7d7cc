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


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The inference dtype named by ``name`` (None: float32), checked against the device.

    float32 is the default everywhere: bfloat16 is faster at large batches but costs the bundled
    model 0.4 dB of delta-t PSNR (README), so it is the user's choice, not a silent one. float16
    is refused on the CPU, where many kernels lack it.
    """
    if isinstance(name, torch.dtype):
        dtype = name
    elif name is None:
        dtype = torch.float32
    elif name in DTYPES:
        dtype = DTYPES[name]
    else:
        raise ValueError(f"unknown dtype {name!r}; use 'float32', 'bfloat16' or 'float16'")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {dtype} is not a floating inference dtype; use float32, bfloat16 or float16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 inference needs a GPU; use 'bfloat16' or 'float32' on the CPU")
    return dtype
