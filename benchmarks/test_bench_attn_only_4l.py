"""Timing suite for attn-only-4l (4 layers, 8 heads, attention only, 1,377 edges): every method at batch sizes 8, 32, seq_len 16.
See conftest.py for the environment knobs and what is measured."""
import pytest

MODEL = "attn-only-4l"
SEQ_LEN = 16
BATCHES = [8, 32]


@pytest.mark.parametrize("batch", BATCHES)
def test_method(time_case, batch, case):  # `case`: every timed case (conftest.pytest_generate_tests)
    time_case(MODEL, batch, SEQ_LEN, case)


@pytest.mark.parametrize("batch", BATCHES)
def test_targets(check_targets, batch):
    check_targets(MODEL, batch, SEQ_LEN)
