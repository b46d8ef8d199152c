"""EAP-IG (inputs): m steps = the mean of m independent mask-gradient evaluations, each at
interpolated input embeddings; one step is EAP's gradient at the corrupted input."""
import pytest
import torch

from harness.core.engine import SenderCache
from harness.methods import get_method
from harness.methods.eap_ig import path_embeddings
from test_eap import objective, tiny_task


def mask_gradient(e, data, emb, name):
    """d objective / d alpha at alpha = 0 in a run on `emb`, through the engine mask alone.

    The mask moves input_r by alpha * (patch_s - current_s); a patch cache holding
    current + (corrupted - clean) makes that the EAP-IG difference (corrupted - clean)."""
    here = e.run(data.clean, record=True, input_embeds=emb).cache()
    clean = e.cache(data.clean)
    corr = e.cache(data.clean, zero=True) if data.ablation == "zero" else e.cache(data.corrupted)
    patch = SenderCache(here.senders + corr.senders - clean.senders, here.qkv + corr.qkv - clean.qkv)
    alpha = torch.zeros(e.graph.n_edges, dtype=torch.float64, requires_grad=True)
    logits = e.run(data.clean, alpha, patch, input_embeds=emb).logits
    return torch.autograd.grad(objective(name, logits, data, e.logits(data.clean)), alpha)[0]


@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_eap_ig_is_mean_of_independent_gradients(ablation, name):
    e, data = tiny_task(ablation, seed=2)
    m = 4
    embs = path_embeddings(e, data, m)
    clean = e.input_embeddings(data.clean)
    start = torch.zeros_like(clean) if ablation == "zero" else e.input_embeddings(data.corrupted)
    for k, emb in enumerate(embs):  # alpha = k/m: left Riemann sum, the clean end excluded
        torch.testing.assert_close(emb, start + k / m * (clean - start))
    want = torch.stack([mask_gradient(e, data, emb, name) for emb in embs]).mean(0)
    got = get_method("eap-ig").run(e, data, "inputs-5", steps=m, objective=name)
    assert want.abs().max() > 1e-4  # the task metric too: off the clean point its gradient lives
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_one_step_is_minus_denoising_eap():
    """alpha = 0 is the corrupted input, so one step is the gradient at the corrupted run times
    (corrupted - clean): EAP's denoising score with the sign flipped."""
    e, data = tiny_task("resample", seed=3)
    one = get_method("eap-ig").run(e, data, "inputs-5", steps=1)
    den = get_method("eap").run(e, data, "denoising")
    torch.testing.assert_close(one, -den, rtol=1e-8, atol=1e-10)

