"""Training-time augmentation of image batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RandomCrop:
    """Zero-pad ``[B, C, H, W]`` images to ``padded_size`` and crop a random ``size`` window
    per image (the clusters experiment: pad to 40, crop 32). Uses torch's global RNG."""

    def __init__(self, size: int, padded_size: int):
        if padded_size < size:
            raise ValueError(f"padded_size {padded_size} is smaller than the crop {size}")
        self.size, self.padded_size = size, padded_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = (self.padded_size - h) // 2, (self.padded_size - w) // 2
        padded = F.pad(x, (left, self.padded_size - w - left, top, self.padded_size - h - top))
        span = self.padded_size - self.size + 1
        offsets = torch.randint(0, span, (len(x), 2), device=x.device)
        rows = offsets[:, :1] + torch.arange(self.size, device=x.device)  # [B, size]
        cols = offsets[:, 1:] + torch.arange(self.size, device=x.device)
        batch = torch.arange(len(x), device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)
