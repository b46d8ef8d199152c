"""Pretrained tasks run as ACDC ran them: per-task, per-metric threshold sweeps, `--metric`, and
attribution objectives equal to each task's ACDC loss metric (docs/scoring.md#acdc-threshold-sweeps)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core import objectives
from harness.core.engine import Engine
from harness.methods import get_method
from harness.tasks import get_task
from harness.tasks.docstring import Docstring
from harness.tasks.greaterthan import GreaterThan
from harness.tasks.ioi import IOI
from tests.test_pretrained_tasks import WordTokenizer, gpt2_tok  # noqa: F401  (fixture)


def sweep(lo, hi, n):
    return pytest.approx(list(10 ** np.linspace(lo, hi, n)))


def test_every_metric_carries_acdcs_sweep(gpt2_tok):  # noqa: F811
    """experiments/launch_spreadsheet.py: IOI KL 10^linspace(-6,0,31), IOI logit diff and
    Docstring 10^(-4..0), Greater-Than probability difference 10^(-3..-1), KL 10^(-6..-4)."""
    want = {("ioi", "kl"): sweep(-6, 0, 31), ("ioi", "logit_diff"): sweep(-4, 0, 21),
            ("greaterthan", "prob_diff"): sweep(-3, -1, 21), ("greaterthan", "kl"): sweep(-6, -4, 11),
            ("docstring", "docstring_metric"): sweep(-4, 0, 21), ("docstring", "kl"): sweep(-4, 0, 21)}
    tasks = {"ioi": IOI(tokenizer=gpt2_tok), "greaterthan": GreaterThan(tokenizer=gpt2_tok), "docstring": Docstring(tokenizer=WordTokenizer())}
    for (t, metric), thresholds in want.items():
        assert list(tasks[t].data(metric=metric).metric.acdc_thresholds) == thresholds, (t, metric)
    assert list(get_task("tracr-reverse").data().metric.acdc_thresholds) == sweep(-5, -1, 21)


def test_acdc_sweeps_the_metrics_thresholds():
    task = get_task("tracr-xproportion")
    e = Engine(task.load_model(dtype=torch.float64))
    data = task.data()
    mine = dataclasses.replace(data, metric=dataclasses.replace(data.metric, acdc_thresholds=(1e-3, 1e-2)))
    fam = get_method("acdc").run(e, mine, "sweep")
    assert fam.thresholds == [1e-3, 1e-2] and fam.circuits.shape[0] == 2


def test_attribution_objective_is_the_acdc_loss_metric(gpt2_tok):  # noqa: F811
    """"logit-diff" is -(ACDC loss metric): IOI IO - S, Greater-Than P(>YY) - P(<=YY), Docstring
    correct - max wrong; "answer-logit-diff" keeps the mean over wrong answers."""
    g = torch.Generator().manual_seed(0)
    for task in (IOI(tokenizer=gpt2_tok), GreaterThan(tokenizer=gpt2_tok), Docstring(tokenizer=WordTokenizer())):
        d = task.data().subset(torch.arange(4))
        V = int(max(d.clean.max(), d.correct.max(), d.wrong.max())) + 1
        logits = torch.randn(d.n, d.clean.shape[1], V, generator=g, dtype=torch.float64)
        ours = objectives.evaluate("logit-diff", logits, logits, d)
        torch.testing.assert_close(ours, -d.metric_values(logits, logits, d.loss))
        torch.testing.assert_close(ours, -d.metric_values(logits, logits))  # the default metric is the loss
        answer = objectives.evaluate("answer-logit-diff", logits, logits, d)
        if task.name == "ioi":  # one wrong answer: the two forms agree
            torch.testing.assert_close(answer, ours)
        else:
            assert not torch.allclose(answer, ours), task.name
    ioi = IOI(tokenizer=gpt2_tok).data()
    assert torch.equal(ioi.counterfactual[:, -1], ioi.rows["s"])  # the counterfactual answer is S


def test_metric_option_runs_and_refuses_what_a_task_lacks(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--tasks", "tracr-reverse", "--methods", "random", "--metric", "kl", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no metric 'kl'" in err and "l2" in err
    assert main(["run", "--tasks", "tracr-reverse", "--methods", "random", "--metric", "l2", "--out", str(tmp_path),
                 "--no-progress", "--bootstrap", "0", "--ablation", "zero"]) == 0  # its own metric, named

