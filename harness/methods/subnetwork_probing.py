"""Subnetwork probing (SP; Cao, Sanh & Rush 2021) as ACDC ran it as a baseline (Conmy et al. 2023,
App. D): a hard-concrete gate per node, trained with the task metric plus a sparsity penalty,
one circuit per penalty weight lambda: a `CircuitFamily`, scored by ACDC's pessimistic AUC.

Facts (not code) from github.com/ArthurConmy/Automatic-Circuit-Discovery, commit bc99ace8
(`subnetwork_probing/train.py`, its transformer_lens fork's `MaskedHookPoint` in
`subnetwork_probing/transformer_lens/transformer_lens/hook_points.py`, the launcher
`subnetwork_probing/launch_grid_fill.py`), and commit 7725612c, whose stored ROC points
(`experiments/results/plots_data/sp-tracr-*.json`) give the paper's SP tracr entries exactly:

- Nodes: the q, k and v of every head and every MLP's output (mask shapes (n_heads, 1) per
  hook and (1,) per MLP). The inputs (embeddings) are never masked.
- Gates (Louizos, Welling & Kingma 2018, hard concrete): log_alpha per node, initialised to
  log(p / (1 - p)) with p = (0.9 - gamma) / (zeta - gamma) (log 5: the test-time gate starts at
  0.9); gamma = -0.1, zeta = 1.1, beta = 2/3. A training step draws one
  u ~ U(0, 1) per node (clamped to [1e-4, 1 - 1e-4]), shared by every example and position:
      s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = clamp(s (zeta - gamma) + gamma, 0, 1).
- A gated node's value is z * (its value in this run) + (1 - z) * (its value in the source run):
  resample ablation caches the corrupted prompts' run; zero ablation multiplies by z.
- Loss: the task metric (ACDC's sign, against the clean outputs) + lambda * R, where R is the
  mean over hooks (per layer: q, k, v, MLP) of the mean over that hook's gates of
  P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta)) (Louizos et al. eq. 12).
  Adam on the gates alone (weights frozen), lr 1e-3, 10,000 epochs (one step per epoch on
  the whole batch); tracr: lambda in 10 ** linspace(-3, 0, 11), written with 3 decimals by the
  launcher (`--lambda-reg={:.3f}`), so 0.001, 0.002, ..., 0.501, 1.0.
- The circuit: after training, one more gate sample; a node with z < 0.5 is masked. Masking a
  q/k/v removes every edge into its q/k/v input and the q/k/v input -> q/k/v edge; masking all
  three of a head removes the head's output edges; masking an MLP removes its input's and its
  output's edges. (ACDC's `visualize_mask` names the MLP by `hook_resid_mid`, whose incoming
  edges its correspondence would keep; the stored ROC points are only reproduced with them
  removed, so that is what its plots used.) Everything else is kept: the input always.

Here (`sp`): a node's gate acts through the engine's patch, towards the task's source run
(`harness.core.references`, the same run every method patches from): a q/k/v gate z patches its
DIRECT edge (q/k/v input -> q/k/v) by 1 - z, an MLP gate patches every edge leaving the MLP by
1 - z (all of its outgoing edges, so every reader sees z * current + (1 - z) * source). That is
ACDC's node mask exactly, with two differences of reference: tracr resample runs scramble the
source's positional embeddings (ACDC's SP did not: add `--no-position-scramble` to reproduce
it), and zero ablation reads the engine's zero run, whose q/k/v are those of the attention
biases alone, where ACDC's SP multiplied q/k/v by z (the same on tracr, which has no attention
biases; not on GPT-2).

Penalty sweeps run together: every lambda's gates are their own parameters, trained in one
forward per step (rows = lambdas x examples, at most `rows_per_forward` per forward, more forwards
when there are more); Adam updates each gate from its own gradient only, so a lambda trains as it
would alone. Each lambda draws its gates from its own generator, seeded from (seed, lambda), so
its circuit does not depend on which other lambdas run beside it: the same seed gives the same
circuits, on CPU bit for bit.

Variants: `acdc` is ACDC's run (its lambda list for the task's metric, `ACDC_LAMBDAS`; 10,000
epochs at lr 1e-3 on every example); `acdc-deterministic` reads its circuits from Louizos et al.'s
test-time gate min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma)) instead of one sample;
`short` (default), to keep the default offline run short: 4 of ACDC's lambdas (both ends kept),
100 epochs at lr 0.1 on the first 16 examples. Adam moves a gate by about lr per step, so its
gates can travel as far as in ACDC's run (10,000 x 1e-3), in 1% of its steps, each a patched
forward and backward of lambdas x examples rows (64 here, 550 for ACDC's run on tracr-xproportion).
"""
from __future__ import annotations

import math
import struct
from typing import Optional

import numpy as np
import torch

from harness.core.references import reference_logits, source_cache
from harness.methods.memory import ACTIVATION_BUDGET, traced_bytes_per_token
from harness.methods.registry import CircuitFamily, Timing, register

GAMMA, ZETA, BETA = -0.1, 1.1, 2 / 3  # MaskedHookPoint's stretch interval and temperature
INIT_KEEP = 0.9  # MaskedHookPoint's mask_p
U_CLAMP = 1e-4  # uniform samples clamped to [1e-4, 1 - 1e-4]
ACDC_EPOCHS, ACDC_LR = 10_000, 1e-3


def _acdc_written(values) -> tuple:
    """A lambda list as ACDC's launcher passed it on the command line (`{:.3f}`), distinct values."""
    return tuple(sorted({float(f"{v:.3f}") for v in values}))


# ACDC's SP lambda sweeps for trained networks, by metric name (subnetwork_probing/launch_grid_fill.py;
# the lambdas of its stored ROC points, experiments/results/plots_data/sp-*-0.json, agree, except that
# Docstring's metric was swept over the KL list). Lambdas equal after rounding ran once each here
# (ACDC ran 10 ** linspace(-4, 2, 21)'s three 0.000s and two 0.001s as separate seeds).
_EXPENSIVE = np.concatenate([10 ** np.linspace(-2, 0, 11), np.linspace(1, 10, 10)[1:], np.linspace(10, 250, 13)[1:]])
ACDC_LAMBDAS = {
    "l2": _acdc_written(10 ** np.linspace(-3, 0, 11)),  # tracr: "typical metric value range 0.0-0.1"
    "kl": _acdc_written(_EXPENSIVE),  # IOI, Greater-Than, Docstring, Induction
    "nll": _acdc_written(_EXPENSIVE),  # Induction
    "docstring_metric": _acdc_written(_EXPENSIVE),  # Docstring (stored points; the launcher says 10 ** linspace(-4, 2, 21))
    "logit_diff": _acdc_written(10 ** np.linspace(-4, 2, 21)),  # IOI
    "prob_diff": _acdc_written(10 ** np.linspace(-4, 2, 21)),  # Greater-Than
}
DEFAULT_LAMBDAS = ACDC_LAMBDAS["logit_diff"]  # a metric ACDC did not sweep: its widest range


# ----- hard concrete (Louizos et al. 2018) ------------------------------------------------------------
def init_log_alpha(keep: float = INIT_KEEP) -> float:
    """The initial log_alpha: logit of (keep - gamma) / (zeta - gamma) (log 5 for keep = 0.9)."""
    p = (keep - GAMMA) / (ZETA - GAMMA)
    return math.log(p / (1 - p))


def hard_concrete_sample(log_alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gates z in [0, 1] from uniform draws u (clamped as ACDC did), differentiable in log_alpha."""
    u = u.clamp(U_CLAMP, 1 - U_CLAMP)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """Louizos et al.'s test-time gate: min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta)): the expected L0 norm's terms."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


# ----- the nodes and what masking them does -----------------------------------------------------------
class Nodes:
    """SP's nodes on a graph: per layer, q, k, v of every head (letter-major), then the MLP.

    `patch` [n_nodes, n_edges]: the engine patch that masks each node fully (its DIRECT edge, or
    every edge out of the MLP); `removes` [n_nodes, n_edges]: the edges a masked node takes out of
    the circuit; `head_out` [n_heads, n_edges]: a head's output edges (gone when its q, k and v are
    all masked), `head_qkv` [n_heads, n_nodes] its three nodes; `weight` [n_nodes]: the share of
    each gate in the penalty (mean over hooks of the mean over a hook's gates)."""

    def __init__(self, graph):
        g, cfg = graph, graph.cfg
        L, H, E, A = cfg.n_layers, cfg.n_heads, g.n_edges, g.n_add
        names, hooks, patch_rows, remove_rows = [], [], [], []
        head_rows, head_nodes = [], []

        def add_edges(mask):
            row = torch.zeros(E, dtype=torch.bool)
            row[:A] = mask
            return row

        for layer in range(L):
            for li, letter in enumerate("qkv"):
                for h in range(H):
                    d = g.direct_index(layer, letter, h)
                    names.append(g.qkv_node(layer, letter, h))
                    hooks.append((layer, letter))
                    p = torch.zeros(E, dtype=torch.bool)
                    p[d] = True
                    patch_rows.append(p)
                    r = add_edges(g.add_receiver == int(g.qkv_receiver[layer, li, h]))
                    r[d] = True
                    remove_rows.append(r)
            for h in range(H):
                head_rows.append(add_edges(g.add_sender == int(g.head_sender[layer, h])))
                first = len(names) - 3 * H
                head_nodes.append([first + li * H + h for li in range(3)])
            if not cfg.attn_only:
                names.append(g.senders[int(g.mlp_sender[layer])].name)
                hooks.append((layer, "mlp"))
                out = add_edges(g.add_sender == int(g.mlp_sender[layer]))
                patch_rows.append(out)
                remove_rows.append(out | add_edges(g.add_receiver == int(g.mlp_receiver[layer])))
        self.names = names
        self.patch = torch.stack(patch_rows)
        self.removes = torch.stack(remove_rows)
        self.head_out = torch.stack(head_rows)
        self.head_qkv = torch.zeros(len(head_nodes), len(names), dtype=torch.bool)
        for i, idx in enumerate(head_nodes):
            self.head_qkv[i, idx] = True
        sizes = {k: hooks.count(k) for k in hooks}
        self.weight = torch.tensor([1.0 / (len(sizes) * sizes[k]) for k in hooks], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.names)

    def circuits(self, kept: torch.Tensor) -> torch.Tensor:
        """kept nodes bool [k, n_nodes] -> kept edges bool [k, n_edges] (ACDC's rule, module docstring)."""
        masked = (~kept).double()
        gone = masked @ self.removes.double() > 0
        heads_gone = (masked @ self.head_qkv.double().T) == 3  # [k, n_heads]
        gone |= heads_gone.double() @ self.head_out.double() > 0
        return ~gone


# ----- training ----------------------------------------------------------------------------------------
def lambda_generator(seed: int, lam: float) -> torch.Generator:
    """Lambda's own stream of gate draws, from (seed, lambda) alone."""
    bits = int.from_bytes(struct.pack("<d", float(lam)), "little")
    state = np.random.SeedSequence([int(seed) % 2**63, bits]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def lambdas_per_forward(batch: int, max_rows: int) -> int:
    return max(1, max_rows // max(1, batch))


MAX_ROWS = 1024  # rows (lambdas x examples) per forward on small models


def rows_per_forward(cfg, dtype) -> int:
    """Rows of one training forward: at most MAX_ROWS, and no more than keep a patched traced run
    of the model's full context within the activation budget (`harness.methods.memory`; a patched
    run holds about twice a traced one's tensors per token: the senders' source mixes). Tracr
    models take MAX_ROWS; GPT-2 takes one lambda per forward (1,024 rows of GPT-2 held over 20 GB
    and the kernel killed the benchmark)."""
    per_row = 2 * traced_bytes_per_token(cfg, dtype) * cfg.n_ctx
    return max(1, min(MAX_ROWS, ACTIVATION_BUDGET // per_row))


def train_gates(engine, data, lambdas, epochs: int, lr: float, seed: int, max_rows: Optional[int] = None,
                final_gate: str = "sample", on_step=None):
    """(log_alpha [k, n_nodes], final gates [k, n_nodes], per-lambda task metric of the last step [k])
    for penalties `lambdas` (module docstring). `max_rows`: rows per forward (default
    `rows_per_forward`; a lambda's circuit does not depend on it). `on_step(epoch, task [k],
    penalty [k])`, if given, is called after every step of every group of lambdas."""
    if final_gate not in ("sample", "deterministic"):
        raise ValueError(f"final_gate must be 'sample' or 'deterministic', not {final_gate!r}")
    nodes = Nodes(engine.graph)
    dev, dt = engine.w.device, engine.w.dtype
    cols, scored = data.scored()
    B = data.n
    if max_rows is None:
        max_rows = rows_per_forward(engine.cfg, dt)
    with torch.no_grad():
        source = source_cache(engine, data)
        clean_logits = reference_logits(engine, data)[0]
    patch_of_node = nodes.patch.to(dev, dt)
    weight = nodes.weight.to(dev, dt)
    per = lambdas_per_forward(B, max_rows)
    log_alphas, gates, last_task = [], [], []
    for start in range(0, len(lambdas), per):
        lams = [float(x) for x in lambdas[start:start + per]]
        k = len(lams)
        gens = [lambda_generator(seed, lam) for lam in lams]
        lam_t = torch.tensor(lams, device=dev, dtype=dt)
        tokens = data.clean.repeat(k, 1)
        src = source.tile(k)
        ref = clean_logits.repeat(k, 1, 1)
        rows = scored.subset(torch.arange(B).repeat(k))
        log_alpha = torch.full((k, len(nodes)), init_log_alpha(), device=dev, dtype=dt, requires_grad=True)
        opt = torch.optim.Adam([log_alpha], lr=lr)

        def draw():
            return torch.stack([torch.rand(len(nodes), generator=gen, dtype=torch.float64) for gen in gens]).to(dev, dt)

        task = torch.full((k,), float("nan"), dtype=dt)
        for epoch in range(epochs):
            z = hard_concrete_sample(log_alpha, draw())  # [k, n_nodes]
            patch = ((1 - z) @ patch_of_node).repeat_interleave(B, dim=0)  # [k * B, n_edges], lambda-major
            logits = engine.run(tokens, patch, src, positions=cols).logits
            task = rows.metric_values(logits, ref).view(k, B).mean(1)
            penalty = open_probability(log_alpha) @ weight
            opt.zero_grad()
            (task + lam_t * penalty).sum().backward()
            opt.step()
            if on_step is not None:
                on_step(epoch, task.detach(), penalty.detach())
        with torch.no_grad():
            la = log_alpha.detach()
            final = hard_concrete_sample(la, draw()) if final_gate == "sample" else deterministic_gate(la)
        log_alphas.append(la.cpu())
        gates.append(final.cpu())
        last_task.append(task.detach().cpu())
    return torch.cat(log_alphas), torch.cat(gates), torch.cat(last_task)


def lambdas_for(data, lambdas=None, n_lambdas: Optional[int] = None) -> list:
    """`lambdas`, or ACDC's sweep for the data's metric (`ACDC_LAMBDAS`); `n_lambdas`: that many
    of them, evenly spaced over the list with both ends kept."""
    if lambdas is None:
        lambdas = ACDC_LAMBDAS.get(data.metric.name, DEFAULT_LAMBDAS)
    lambdas = [float(x) for x in lambdas]
    if n_lambdas is not None and n_lambdas < len(lambdas):
        pick = np.unique(np.linspace(0, len(lambdas) - 1, max(1, int(n_lambdas))).round().astype(int))
        lambdas = [lambdas[i] for i in pick]
    return lambdas


def _forwards(epochs: int, n_lambdas: int, examples: Optional[int] = None):
    """Patched forwards of a run (for `Timing`): one per epoch per group of lambdas (groups as
    `rows_per_forward` makes them in float32, the benchmarks' default)."""
    def count(graph, batch):
        rows = rows_per_forward(graph.cfg, torch.float32)
        return epochs * math.ceil(n_lambdas / lambdas_per_forward(min(batch, examples or batch), rows))
    return count


SHORT = {"epochs": 100, "lr": 0.1, "n_lambdas": 4, "examples": 16}
TIMED_EPOCHS = 100


@register(
    "sp",
    "subnetwork probing (ACDC's SP baseline): hard-concrete gates on heads' q/k/v and MLPs, one circuit per L0 penalty",
    {
        "short": (dict(SHORT), f"{SHORT['n_lambdas']} of ACDC's lambdas, {SHORT['epochs']} epochs at lr {SHORT['lr']:g} "
                               f"on the first {SHORT['examples']} examples (gates can travel as far as in ACDC's run)"),
        "acdc": ({"epochs": ACDC_EPOCHS, "lr": ACDC_LR},
                 f"ACDC's SP run: its lambda sweep for the metric, {ACDC_EPOCHS:,} epochs at lr {ACDC_LR:g}, one final gate sample"),
        "acdc-deterministic": ({"epochs": ACDC_EPOCHS, "lr": ACDC_LR, "final_gate": "deterministic"},
                               "ACDC's SP run, circuit read from Louizos et al.'s deterministic test-time gate"),
    },
    output="family",
    default_variants=["short"],
    references=("resample", "zero"),
    seeded=True,
    default_max_edges=5000,
    # one patched forward (and backward) per epoch; ACDC's run timed over its first 100 epochs (x100 for all)
    timings=lambda bench: [
        Timing("short", patched_forwards=_forwards(SHORT["epochs"], SHORT["n_lambdas"], SHORT["examples"])),
        Timing("acdc", label=f"acdc-{TIMED_EPOCHS}-epochs", options={"epochs": TIMED_EPOCHS},
               patched_forwards=_forwards(TIMED_EPOCHS, len(DEFAULT_LAMBDAS))),
    ],
    architectures="one-kv",
)
def subnetwork_probing(engine, data, lambdas=None, n_lambdas: Optional[int] = None, epochs: int = ACDC_EPOCHS,
                       lr: float = ACDC_LR, examples: Optional[int] = None, seed: int = 0, final_gate: str = "sample",
                       max_rows: Optional[int] = None):
    """One circuit per lambda (`lambdas_for`: ACDC's sweep for the data's metric unless `lambdas`
    is given, `n_lambdas` of it), in that order; the family's `thresholds` are the lambdas.
    `examples`: train on the first that many examples only (None: all, as ACDC)."""
    lams = lambdas_for(data, lambdas, n_lambdas)
    if examples is not None and examples < data.n:
        data = data.subset(torch.arange(int(examples)))
    rows = None if max_rows is None else int(max_rows)
    _, gates, _ = train_gates(engine, data, lams, int(epochs), float(lr), int(seed), rows, final_gate)
    kept = gates >= 0.5  # ACDC masks a node whose gate is below 0.5
    return CircuitFamily(circuits=Nodes(engine.graph).circuits(kept), thresholds=lams)
