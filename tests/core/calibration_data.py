"""Calibration data for the activation tests: word texts of a fixed vocabulary (the tiny
tokenizer knows these words) and one torch thread (the ``data`` fixture is in conftest.py)."""

from __future__ import annotations

import random

import pytest
import torch

WORDS = ["the", "capital", "of", "france", "is", "paris", "and", "rome", "quantization", "maps"]
WORDS += ["weights", "to", "a", "small", "grid", "while"]


def words(seed: int, count: int = 2500) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny model's matrices are small: on a loaded machine a second thread costs waits, not speed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
