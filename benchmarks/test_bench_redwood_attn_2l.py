"""Timing suite for redwood_attn_2l (2 layers, 8 heads, attention only, shortformer, 305 edges): every method at batch sizes 8, 32, seq_len 16.
See conftest.py for the environment knobs and what is measured."""
import pytest

MODEL = "redwood_attn_2l"
SEQ_LEN = 16
BATCHES = [8, 32]


@pytest.mark.parametrize("batch", BATCHES)
def test_method(time_case, batch, case):  # `case`: every timed case (conftest.pytest_generate_tests)
    time_case(MODEL, batch, SEQ_LEN, case)


@pytest.mark.parametrize("batch", BATCHES)
def test_targets(check_targets, batch):
    check_targets(MODEL, batch, SEQ_LEN)
