"""Shared test settings: CPU, bounded threads, no network."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny nets: more OpenMP threads only spin (measured 20x CPU under load)
