"""Timing suite for gpt2 (12 layers, 12 heads, MLPs, 32,923 edges): every method at batch sizes 8, seq_len 16.
See conftest.py for the environment knobs and what is measured."""
import pytest

MODEL = "gpt2"
SEQ_LEN = 16
BATCHES = [8]


@pytest.mark.parametrize("batch", BATCHES)
def test_method(time_case, batch, case):  # `case`: every timed case (conftest.pytest_generate_tests)
    time_case(MODEL, batch, SEQ_LEN, case)


@pytest.mark.parametrize("batch", BATCHES)
def test_targets(check_targets, batch):
    check_targets(MODEL, batch, SEQ_LEN)
