"""The method under study: backpropagate a loss between the model's prediction and a
"maximally wrong" target (see `targets.py`) and score each edge by the gradient it carries.

Gradient sites, each named for the reference it measures against (the run's `ablation`):
- `activation`: gradient x (activation - source activation), per edge
  <dL/d input_r, output_s - source_s> (for a DIRECT edge <dL/dq, q - q_source>), where the source
  is the run the reference patches from (`harness.core.references`). Under the zero reference
  the source's sender outputs are zero, so this is first-order zero-ablation attribution
  (<dL/d input_r, output_s>); under resample it is taken against the corrupted run. It is
  therefore always compared with baselines that patch from the same source.
- `activation-abs`: the activation site summed over examples as |per-example score|, which
  cannot cancel over the batch (docs/scoring.md#ties-round-off-and-degenerate-objectives).
- `weight-node`, `weight-edge`, `weight-edge-taylor`: through weight gradients dL/dW at the
  clean point (norms per node, the exact per-sender split of dL/dW, and its inner product with
  W). dL/dW has no source: weight-edge-taylor equals the activation site with a zero reference
  on ADDITION edges (`weight_sites.py`), so the weight sites accept the zero reference only.
LayerNorm scale: activation sites and weight-node use the plain gradient; weight-edge sites
freeze the scale (the premise of their linear split). `freeze_ln_scale` overrides either.
Variants are named `<target>/<site>`.
"""
from __future__ import annotations

from harness.core.references import source_cache, source_run
from harness.methods.attribution import contract, differences, receiver_grads, traced_run
from harness.methods.registry import METHODS, Timing, register
from harness.methods.targets import Target, needs_source_logits, on_register, target_loss
from harness.methods.weight_sites import ShareFactors, share_factors, weight_edge_bytes, weight_grads, weight_node_scores

SITES = {
    "activation": "gradient x (activation - source activation): the run's reference",
    "activation-abs": "the activation site summed over examples as |per-example score| (cannot cancel over the batch)",
    "weight-node": "||dL/dW|| of the receiver's input weight (output edges: the sender's output weight)",
    "weight-edge": "||share of dL/dW from the sender|| (exact split, frozen LN scale)",
    "weight-edge-taylor": "<share of dL/dW from the sender, W> (frozen LN scale)",
}
FROZEN_BY_DEFAULT = ("weight-edge", "weight-edge-taylor")
ZERO_ONLY = ("weight-node", "weight-edge", "weight-edge-taylor")  # dL/dW: no source, a zero reference
TIMED_TARGET = "logit-diff-mse"  # the benchmarks time every site with the seed's target

DEFAULT_EXTRA = ("logit-diff-mse/activation-abs", "logit-diff-mse/weight-node", "logit-diff-mse/weight-edge",
                 "logit-diff-mse/weight-edge-taylor")  # the seed's target at every site, by default


def _site_options(target: str, site: str) -> dict:
    if site == "activation-abs":
        return {"target": target, "site": "activation", "aggregate": "abs"}
    return {"target": target, "site": site}


@register(
    "grad-wrong",
    "gradient of a loss towards a maximally wrong answer, scored per edge",
    {},  # one variant per registered target x site, added by `_add_target`
    references={},
    gradient=True,
    per_example=(),
    per_position=(),
    grid=({}, SITES),
    objective=lambda opts, logits, clean_logits, source_logits, data: target_loss(opts["target"], logits, data, clean_logits, source_logits),
    timings=lambda bench: [Timing(f"{TIMED_TARGET}/{site}", memory_bytes=weight_edge_bytes if site.startswith("weight-edge") else None)
                           for site in SITES],
    architectures=lambda options: "gpt2-style" if options.get("site", "").startswith("weight") else "all",
)
def grad_wrong(engine, data, target="logit-diff-mse", site="activation", per_example=False, per_position=False,
               freeze_ln_scale=None, chunk=None):
    """[n_edges] scores (per_example, per_position: [batch, n_edges], [pos, n_edges], both [batch, pos, n_edges]). `chunk`: the weight sites pass at most
    that many examples at a time (the activation sites are split by `MethodSpec.run`)."""
    if site not in SITES:
        raise KeyError(f"unknown gradient site {site!r}; sites: {', '.join(SITES)}")
    if (per_example or per_position) and site.startswith("weight"):
        raise ValueError("weight sites sum over examples and positions (dL/dW); per-example and per-position scores are not available")
    freeze = site in FROZEN_BY_DEFAULT if freeze_ln_scale is None else bool(freeze_ln_scale)
    if site.startswith("weight"):
        return _weight_site(engine, data, target, site, freeze, chunk)
    # The run being differentiated is the clean run, so its own logits are the clean logits; the
    # source run is one no-grad forward. Both unembed only the scored columns.
    cols, scored = data.scored()
    if needs_source_logits(target, data):
        source, source_logits = source_run(engine, data, cols)
    else:
        source, source_logits = source_cache(engine, data), None
    tr = traced_run(engine, data.clean, freeze_ln_scale=freeze, positions=cols)
    grads = receiver_grads(tr, target_loss(target, tr.logits, scored, tr.logits.detach(), source_logits))
    d_senders, d_qkv = differences(tr, source, towards_source=False)
    return contract(engine, grads, d_senders, d_qkv, per_example=per_example, per_position=per_position).detach()


def _weight_site(engine, data, target, site, freeze, chunk):
    """A weight site in passes of at most `chunk` examples. The targets are batch means, so a
    pass's loss weighted by its share of the examples makes dL/dW, the Taylor values and the
    DIRECT edges' dL/dW add over passes, and the shares' factors concatenate over tokens
    (`ShareFactors.cat`): every site equals its one-pass value. The source run (made only for
    targets that read its logits) is the pass's own."""
    dW, taylor, factors = None, None, None
    for part, share in data.passes(chunk):
        cols, scored = part.scored()  # only the scored columns are unembedded
        source_logits = source_run(engine, part, cols)[1] if needs_source_logits(target, part) else None

        def loss_of(logits):
            return share * target_loss(target, logits, scored, logits.detach(), source_logits)

        if site == "weight-node":
            grads = weight_grads(engine, part.clean, loss_of, freeze, positions=cols)
            dW = grads if dW is None else {k: dW[k] + v for k, v in grads.items()}
            continue
        tr = traced_run(engine, part.clean, freeze_ln_scale=freeze, positions=cols)
        f = share_factors(engine, tr, loss_of(tr.logits))
        del tr  # the pass's autograd graph; only its factors are kept
        if site == "weight-edge-taylor":  # linear in the loss: add the passes' values
            vals = f.scores(engine.graph, taylor=True)
            taylor = vals if taylor is None else taylor + vals
        else:  # folded in as they come: a pass's weight stacks and DIRECT dL/dW are not kept
            factors = f if factors is None else ShareFactors.cat([factors, f])
        del f
    if site == "weight-node":
        return weight_node_scores(engine, dW)
    return taylor if site == "weight-edge-taylor" else factors.scores(engine.graph, taylor=False)


def _add_target(target: Target) -> None:
    """Every gradient site of a registered target becomes a variant `<target>/<site>` (dL/dW sites:
    zero reference only, no per-example or per-position scores, chunked by the site itself)."""
    spec = METHODS["grad-wrong"]
    for site, site_desc in SITES.items():
        weight = site.startswith("weight")
        name = f"{target.name}/{site}"
        spec.add_variant(name, _site_options(target.name, site), f"{target.description}; site: {site_desc}",
                         references=("zero",) if site in ZERO_ONLY else None, per_example=not weight,
                         per_position=not weight,
                         chunks_itself=weight, row_description=target.description,
                         default=site == "activation" and target.default)


on_register(_add_target)
METHODS["grad-wrong"].default_variants += DEFAULT_EXTRA
