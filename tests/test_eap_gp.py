"""EAP-GP (GradPath): the path against known answers (a straight line where the outputs are an
orthogonal map of the embeddings; the first step against finite differences of the output
distance), the scores against independent mask gradients at the path's points, a straight path
against EAP-IG's own code, and a run through the registry on a tracr task under both references."""
import pytest
import torch

from harness.core.references import reference_logits, source_input_embeds
from harness.methods import get_method
from harness.methods import eap_gp as gp
from test_eap import check_runs_on_tracr, tiny_task
from test_eap_ig import mask_gradient


def engine_logits(e, data):
    cols = data.scored_positions()
    return lambda emb: e.run(data.clean, input_embeds=emb, positions=cols).logits


@pytest.mark.parametrize("step", ["unit", "distance"])
def test_gradpath_is_the_straight_line_for_an_orthogonal_linear_model(step):
    """G(e) = Q e with Q orthogonal: the gradient of ||G(e) - G(x')||^2 points from x' to e, so
    GradPath walks the straight line towards x': unit steps, or ||x' - x|| / m."""
    g = torch.Generator().manual_seed(0)
    n_in, B, P, D, m = 2, 3, 4, 5, 4
    Q, _ = torch.linalg.qr(torch.randn(n_in * P * D, n_in * P * D, generator=g, dtype=torch.float64))
    G = lambda emb: emb.transpose(0, 1).reshape(B, -1) @ Q.T  # noqa: E731
    x = torch.randn(n_in, B, P, D, generator=g, dtype=torch.float64)
    x_ref = x + 3 * torch.randn(n_in, B, P, D, generator=g, dtype=torch.float64)  # ||x' - x|| >> m unit steps
    points = gp.gradpath(G, x, G(x_ref), m, step, end=x_ref)
    dist = (x_ref - x).transpose(0, 1).flatten(1).norm(dim=1).view(1, B, 1, 1)
    assert (dist > m).all()
    for j, pt in enumerate(points, 1):
        want = x + (j / m if step == "distance" else j / dist) * (x_ref - x)
        torch.testing.assert_close(pt, want, rtol=1e-10, atol=1e-10)


def test_gradpath_stops_where_the_outputs_reach_the_target():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    points = gp.gradpath(lambda emb: emb.transpose(0, 1).reshape(2, -1), x, x.transpose(0, 1).reshape(2, -1), 3)
    for pt in points:
        torch.testing.assert_close(pt, x, rtol=0, atol=0)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_first_step_follows_the_finite_difference_gradient(ablation):
    """gamma_1 - gamma_0 = -g / ||g|| with g the central finite differences of the output distance
    over every input-embedding coordinate (no autograd)."""
    e, data = tiny_task(ablation, seed=4)
    G = engine_logits(e, data)
    x = e.input_embeddings(data.clean)
    target = reference_logits(e, data)[1]
    (point,) = gp.gradpath(G, x, target, 1)
    dist = lambda emb: (G(emb) - target).pow(2).sum(dim=(1, 2))  # noqa: E731  per example
    eps, fd = 1e-6, torch.zeros_like(x)
    for idx in range(x.numel()):
        d = torch.zeros(x.numel(), dtype=x.dtype)
        d[idx] = eps
        d = d.view_as(x)
        b = torch.nonzero(d)[0, 1]
        fd.view(-1)[idx] = (dist(x + d)[b] - dist(x - d)[b]) / (2 * eps)
    norm = fd.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, 1, 1)
    assert (norm > 1e-3).all()
    torch.testing.assert_close(point - x, -fd / norm, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("step", ["unit", "distance"])
@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_eap_gp_is_the_mean_of_independent_gradients_on_gradpath(ablation, name, step):
    """The method (whose path shares forwards with its attribution) equals the mean over
    `gradpath`'s points gamma_1..gamma_m of engine-mask gradients (no receiver gradients, no
    contraction), with the EAP noising difference."""
    e, data = tiny_task(ablation, seed=2)
    m = 3
    x = e.input_embeddings(data.clean)
    end = torch.zeros_like(x) if ablation == "zero" else source_input_embeds(e, data)
    points = gp.gradpath(engine_logits(e, data), x, reference_logits(e, data)[1], m, step, end=end)
    assert all((p - x).abs().max() > 1e-3 for p in points)  # the path moves
    want = torch.stack([mask_gradient(e, data, pt, name) for pt in points]).mean(0)
    got = get_method("eap-gp").run(e, data, "unit-5", steps=m, step=step, objective=name)
    assert want.abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_a_straight_gradpath_gives_eap_ig(monkeypatch, ablation):
    """Where GradPath is the straight line of ||x' - x|| / m steps (forced here), its points are
    EAP-IG's alpha = k/m, k = 0..m-1 (counted from the other end), so the scores are EAP-IG's
    from its own code."""
    e, data = tiny_task(ablation, seed=5)
    m = 4
    x = e.input_embeddings(data.clean)
    end = torch.zeros_like(x) if ablation == "zero" else source_input_embeds(e, data)
    monkeypatch.setattr(gp, "gradpath_step", lambda gamma, grad, length: gamma + (end - x) / m)
    got = get_method("eap-gp").run(e, data, "distance-5", steps=m)
    want = get_method("eap-ig").run(e, data, "inputs-5", steps=m)
    assert want.abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_registry_runs_on_a_tracr_task(xproportion_model, ablation):
    e, data = xproportion_model
    spec = get_method("eap-gp")
    check_runs_on_tracr("eap-gp", spec.default_variants, "unit-5", e, data.with_ablation(ablation))
