"""What the trainers log besides the losses."""
import torch


def side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """Rows of frames for TensorBoard: each (T, 3, H, W) video becomes one row -> (1, 3, k*H, T*W)."""
    rows = [torch.cat(list(v), dim=-1) for v in videos]
    return torch.cat(rows, dim=-2).unsqueeze(0)
