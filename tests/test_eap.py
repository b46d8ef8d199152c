"""EAP equals the first-order effect of patching each edge, measured by finite differences on the
engine patch (an independent path: no receiver gradients, no contraction)."""
import pytest
import torch

from harness.core.engine import Engine
from harness.methods import get_method
from harness.core import objectives
from harness.core.data import Metric, TaskData
from harness.core.weights import ModelConfig, random_weights

CFG = ModelConfig("tiny-eap", 2, 2, 8, 4, 11, 6, d_mlp=12, act_fn="gelu_new", normalization_type="LN")


def random_prompts(cfg, B: int, P: int, seed: int, ablation: str) -> TaskData:
    """Random clean and corrupted prompts [B, P] for model `cfg`, the last two positions scored,
    random correct and two wrong answers, ACDC's KL metric (seeded: the same data for a seed)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.d_vocab, (B, P), generator=g)
    corr = torch.randint(0, cfg.d_vocab, (B, P), generator=g)
    pos_mask = torch.zeros(B, P, dtype=torch.bool)
    pos_mask[:, -2:] = True
    correct = torch.randint(0, cfg.d_vocab, (B, P), generator=g)
    wrong = (correct.unsqueeze(-1) + 1 + torch.randint(0, cfg.d_vocab - 1, (B, P, 2), generator=g)) % cfg.d_vocab
    return TaskData(clean=clean, corrupted=corr, pos_mask=pos_mask,
                    metric=Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}), correct=correct, wrong=wrong,
                    ablation=ablation)


def tiny_task(ablation="resample", seed=0):
    e = Engine(random_weights(CFG, seed=seed, dtype=torch.float64, init_range=0.15))
    data = random_prompts(CFG, 3, 5, seed, ablation)
    return e, data


def objective(name, logits, data, clean_logits):
    return objectives.evaluate(name, logits, clean_logits, data).mean()


def finite_differences(e, data, tokens, cache, name, eps=1e-5):
    """Central differences d objective / d alpha_e at alpha = 0, all edges in one forward."""
    E = e.graph.n_edges
    clean_logits = e.logits(data.clean)
    patches = torch.cat([torch.eye(E, dtype=torch.float64) * eps, -torch.eye(E, dtype=torch.float64) * eps])
    vals = torch.stack([objective(name, lg, data, clean_logits)
                        for _, chunk in e.run_many(tokens, patches, cache, chunk=2 * E) for lg in chunk])
    return (vals[:E] - vals[E:]) / (2 * eps)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_eap_noising_equals_finite_differences(ablation, name):
    e, data = tiny_task(ablation)
    cache = e.cache(data.clean, zero=True) if ablation == "zero" else e.cache(data.corrupted)
    fd = finite_differences(e, data, data.clean, cache, name)
    eap = get_method("eap").run(e, data, "noising", objective=name)
    if name == "metric":  # KL vs clean has zero gradient at the clean point: the pitfall
        assert fd.abs().max() < 1e-8 and eap.abs().max() < 1e-8
        return
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(eap, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_eap_denoising_equals_finite_differences(name):
    """Denoising: the corrupted run, edges moved towards the clean run."""
    e, data = tiny_task("resample", seed=1)
    fd = finite_differences(e, data, data.corrupted, e.cache(data.clean), name)
    eap = get_method("eap").run(e, data, "denoising", objective=name)
    assert fd.abs().max() > 1e-4
    torch.testing.assert_close(eap, fd, rtol=1e-6, atol=1e-9)


def check_runs_on_tracr(method: str, variants, summed_variant: str, e, data) -> None:
    """Each of the method's `variants` gives finite, non-zero scores for every edge on a tracr task,
    and `summed_variant`'s per-example terms sum to its scores (float32: to round-off)."""
    spec = get_method(method)
    assert spec.gradient and set(spec.references_for(summed_variant)) == {"resample", "zero"}
    for v in variants:
        s = spec.run(e, data, v)
        assert s.shape == (e.graph.n_edges,) and torch.isfinite(s).all() and s.abs().max() > 0
    terms = spec.run(e, data, summed_variant, per_example=True)
    assert terms.shape == (data.n, e.graph.n_edges)
    torch.testing.assert_close(terms.sum(0), spec.run(e, data, summed_variant), rtol=1e-5, atol=1e-6)
