"""Replay pool of synthetic images with their (exact, cached) teacher logits.

The teacher is frozen, so logits recorded when a batch was synthesised stay exact; the student can
replay old batches without spending teacher passes (the data pool of CMI / Fast DFKD).
"""

from __future__ import annotations

from typing import Any

import torch


class SamplePool:
    """Ring buffer of ``(x, t_logits)``.

    Args:
        capacity: maximum number of images.
    """

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self.x: torch.Tensor | None = None
        self.t: torch.Tensor | None = None
        self.count = 0
        self.ptr = 0

    def __len__(self) -> int:
        return self.count

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        x, t = x.detach().float(), t.detach().float()
        if self.x is None:
            self.x = torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.t = torch.empty((self.capacity, t.shape[1]), dtype=t.dtype, device=t.device)
        assert self.t is not None
        n = x.shape[0]
        idx = (torch.arange(n, device=x.device) + self.ptr) % self.capacity
        self.x[idx] = x
        self.t[idx] = t
        self.ptr = (self.ptr + n) % self.capacity
        self.count = min(self.capacity, self.count + n)

    def sample(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.x is not None and self.t is not None and self.count > 0
        idx = torch.randint(self.count, (n,), generator=rng).to(self.x.device)
        return self.x[idx], self.t[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"x": None if self.x is None else self.x[: self.count].cpu(),
                "t": None if self.t is None else self.t[: self.count].cpu(),
                "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.x = self.t = None
        self.count = self.ptr = 0
        if state.get("x") is not None and state["count"] > 0:
            x, t = state["x"].to(device), state["t"].to(device)
            self.x = torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype, device=device)
            self.t = torch.empty((self.capacity, t.shape[1]), dtype=t.dtype, device=device)
            self.x[: x.shape[0]] = x
            self.t[: t.shape[0]] = t
            self.count, self.ptr = int(state["count"]), int(state["ptr"])
