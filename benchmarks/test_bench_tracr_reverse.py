"""Timing suite for tracr-reverse (compiled-shape tracr model, 4 layers, 106 edges): every method at batch sizes 2, 32, seq_len 6.
See conftest.py for the environment knobs and what is measured."""
import pytest

MODEL = "tracr-reverse"
SEQ_LEN = 6
BATCHES = [pytest.param(2, marks=pytest.mark.quick), 32]


@pytest.mark.parametrize("batch", BATCHES)
def test_method(time_case, batch, case):  # `case`: every timed case (conftest.pytest_generate_tests)
    time_case(MODEL, batch, SEQ_LEN, case)


@pytest.mark.parametrize("batch", BATCHES)
def test_targets(check_targets, batch):
    check_targets(MODEL, batch, SEQ_LEN)
