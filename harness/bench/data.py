"""Random task data for timing: how long a method takes depends on shapes, never on token values,
so any model of `architectures.py` can be timed without its task or its trained weights."""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData


def random_task_data(cfg, batch: int, seq_len: int, seed: int = 0, device="cpu") -> TaskData:
    """Random clean / corrupted tokens [batch, seq_len] (on `device`), scored at the last position.

    Categorical outputs: a random correct and a random (different) wrong answer token, correct
    [batch, seq_len] and wrong [batch, seq_len, 1]; metric = -(correct - wrong logit) (ACDC's
    sign: lower is better). One numerical output (vocab_out 1): metric = squared distance of the
    output to the clean model's (`objectives.l2`), as ACDC's tracr-xproportion.
    """
    if seq_len > cfg.n_ctx:
        raise ValueError(f"seq_len {seq_len} exceeds {cfg.name}'s n_ctx {cfg.n_ctx}")
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.d_vocab, (batch, seq_len), generator=g)
    corrupted = torch.randint(0, cfg.d_vocab, (batch, seq_len), generator=g)
    pos_mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    pos_mask[:, -1] = True
    dev = torch.device(device if device is not None else "cpu")
    tokens = dict(clean=clean.to(dev), corrupted=corrupted.to(dev), pos_mask=pos_mask,
                  info={"source": "random tokens (harness.bench.data)", "seed": seed})
    V = cfg.vocab_out
    if V == 1:
        return TaskData(**tokens, metric=Metric("l2", objectives.l2, reads={"pos_mask": "pos_mask"}), categorical=False)
    correct = torch.randint(0, V, (batch, seq_len), generator=g)
    wrong = (correct + torch.randint(1, V, (batch, seq_len), generator=g)) % V
    counterfactual = torch.randint(0, V, (batch, seq_len), generator=g)
    metric = Metric("logit-diff", objectives.neg_answer_logit_diff,
                    reads={"pos_mask": "pos_mask", "correct": "correct", "wrong": "wrong"}, const={"categorical": True})
    return TaskData(**tokens, metric=metric, categorical=True, correct=correct, wrong=wrong.unsqueeze(-1),
                    counterfactual=counterfactual)
