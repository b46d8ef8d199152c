"""The seed's own experiment (issue: the prompt pair on GPT-2 small) and the per-head maps, offline:
the prompts through GPT-2's real BPE, the maps on a random-init GPT-2 of the real size."""
from __future__ import annotations

import numpy as np
import torch

from harness.core.architectures import ARCHITECTURES
from harness.core import objectives
from harness.core.data import Metric, TaskData
from harness.core.engine import Engine
from harness.core.weights import ModelConfig, random_weights
from harness.eval.head_maps import MAPS, direct_effects, head_maps
from harness.methods.patching import act_patch_edge
from harness.report.head_maps import plot_head_maps
from harness.tasks.ioi import IOI
from harness.tasks.seed_pair import SeedPair
from tests.test_pretrained_tasks import gpt2_tok  # noqa: F401  (fixture)


def test_the_pair_tokenises_as_the_seed_wrote_it(gpt2_tok):  # noqa: F811
    d = SeedPair(tokenizer=gpt2_tok).data()
    assert d.n == 2 and d.clean.shape[1] == len(gpt2_tok.encode("When Mary and John went to the store, Mary gave a drink to"))
    assert gpt2_tok.decode(d.clean[0]) == "When Mary and John went to the store, Mary gave a drink to"
    assert [gpt2_tok.decode([int(t)]) for t in d.correct[:, -1]] == [" John", " Mary"]
    assert [gpt2_tok.decode([int(t)]) for t in d.wrong[:, -1, 0]] == [" Mary", " John"]
    assert torch.equal(d.corrupted, d.clean.flip(0))  # each prompt's corruption is the other
    assert SeedPair(tokenizer=gpt2_tok).ground_truths().keys() == IOI(tokenizer=gpt2_tok).ground_truths().keys()


def test_head_maps_on_random_init_gpt2(gpt2_tok, tmp_path):  # noqa: F811
    task = SeedPair(tokenizer=gpt2_tok)
    e = Engine(random_weights(ARCHITECTURES["gpt2"], seed=0))
    hm = head_maps(e, task.data(), task)
    for name in MAPS:
        assert hm.maps[name].shape == (12, 12) and torch.isfinite(hm.maps[name]).all()
    assert all((hm.maps[f"dL/dW_{x}"] > 0).all() for x in "QKVO")
    assert (9, 9) in hm.ground_truth_heads and (0, 0) not in hm.ground_truth_heads  # IOI's name mover 9.9
    png = plot_head_maps(hm, tmp_path / "heads.png", "seed-pair")
    assert png.stat().st_size > 20_000
    assert len(hm.frame()) == 144 and hm.frame()["ground_truth"].sum() == len(hm.ground_truth_heads)


ANSWER = Metric("answer", objectives.neg_answer_logit_diff, {"pos_mask": "pos_mask", "correct": "correct", "wrong": "wrong"})


def test_direct_effect_is_the_head_to_logits_edge_zero_patched():
    """Without LayerNorm a head's direct effect is exactly what removing its edge into the logits
    changes: act-patch-edge under the zero reference on the answer logit difference."""
    cfg = ModelConfig("tiny-noln", 2, 3, 16, 4, 12, 5, d_mlp=16, normalization_type=None)
    e = Engine(random_weights(cfg, seed=2, init_range=0.4).to("cpu", torch.float64))
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 12, (6, 5), generator=g)
    pos = torch.zeros(6, 5, dtype=torch.bool)
    pos[:, -1] = True
    correct = torch.randint(0, 12, (6, 5), generator=g)
    wrong = ((correct + 1) % 12).unsqueeze(-1)
    data = TaskData(clean=clean, corrupted=clean.flip(0), pos_mask=pos, metric=ANSWER, correct=correct, wrong=wrong,
                    ablation="zero")
    de = direct_effects(e, data)
    names = e.graph.edge_ids
    out = e.graph.receivers[e.graph.output_receiver].name
    ids = [names[f"blocks.{L}.attn.hook_result[:, :, {h}] -> {out}"] for L in range(2) for h in range(3)]
    patched = act_patch_edge(e, data, objective="answer-logit-diff", edges=ids)[ids]
    np.testing.assert_allclose(-patched.numpy(), de.reshape(-1).numpy(), atol=1e-10)
