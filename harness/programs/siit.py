"""Strict Interchange Intervention Training (SIIT): an ordinary transformer taught a compiled
program's circuit (Gupta, Arcuschin et al. 2024, "InterpBench", arXiv 2407.14494; docs/trained.md).

The compiled tracr model is the high-level model (HL). A fresh low-level model (LL: LayerNorm,
GELU, random initialisation as TransformerLens's, a residual wider than the compiled one) is
trained with three losses on pairs (base b, source s) of inputs:

- behaviour: the LL's output on b against the HL's;
- interchange intervention (IIT): one HL node h (a head or MLP of the compiled circuit) takes its
  output on s while running on b; the LL node at the same place (`correspondence`) does the same,
  and the LL's output must match the intervened HL's;
- strict: one LL node outside the correspondence (by default; `strict_nodes`) takes its output on
  s; the LL's output must stay the HL's output on b, so nodes outside the circuit are trained to
  be irrelevant.

Interventions replace a node's output with the source run's, detached, through the engine's
`hold` (as TransformerLens caches are detached in InterpBench's code). Categorical outputs use
cross-entropy against the HL's class, numerical ones the squared error. Losses are read at the
task's scored positions. The three losses are summed with weights 1, 1 and 1 (InterpBench weights
strict 0.4) and take one Adam step together (InterpBench's default takes one step per loss);
docs/trained.md#training says why.

Options (`TrainConfig`, docs/trained.md#training): one optimiser step per loss (InterpBench's
default); a logit term in the strict loss (`strict_logits`); gradient from the strict loss into the
ablated node's own weights through its source output (`strict_grad`); a term that trains the
output toward uniform where the compiled output is blank (`blank_weight`; docs/trained.md#labels).

Validation (`validate`), on given (base, source) pairs in float64: behaviour accuracy; IIA
(interchange-intervention accuracy) per HL node; strict accuracy per non-circuit LL node
(resample-ablating it must leave the HL's answer). Accuracy is per scored position: the argmax
class for categorical outputs, |LL - HL| < atol (0.05, InterpBench's) for numerical ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.core.weights import ModelConfig, Weights

SUMMARY = ("accuracy", "iia", "iia_min", "strict", "strict_min", "strict_effect_max", "circuit_effect_min", "shift_share")
# A compiled categorical output is the program's value only where it is a one-hot. Where a categorical
# Aggregate selects several different values, tracr's model averages their one-hots (tracr's own
# validator: "the compiled model will silently give incorrect outputs", tracr/compiler/validating.py),
# e.g. 2/3 S + 1/3 IO; such positions are not labels (docs/trained.md#labels). An average over n
# positions has a largest entry of at most (n-1)/n, below 0.99 in any context under 100 positions;
# a one-hot's exceeds 0.999.
DEFINED = 0.99
MIXTURE = 0.5  # TrainConfig.mixture_labels: the earlier rule, which also labelled mixtures by their largest entry
# A compiled categorical output with no entry above this is blank: the program selected nothing there (e.g. IOI's
# corrupted prompts, which repeat no name), and its softmax is uniform (TrainConfig.blank_weight). An average
# over n selected positions has a largest entry of at least 1/n, above 0.05 in any context under 20 positions.
BLANK = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are the ones every shipped model was trained with."""

    max_steps: int = 3000
    batch: int = 64
    lr: float = 3e-3  # peak; cosine decay to lr_end over max_steps
    lr_end: float = 1e-4
    iit_weight: float = 1.0  # InterpBench's weights: iit 1, behaviour 1, strict 0.4
    behaviour_weight: float = 1.0
    strict_weight: float = 1.0  # InterpBench: 0.4 (docs/trained.md#training says why not here)
    strict_nodes: str = "one"  # per step: one non-circuit node (InterpBench's "individual"), "subset" (each
    # with probability 1/2) or "all"
    step_per_loss: bool = False  # one Adam step per loss (IIT, behaviour, strict; InterpBench's default) instead of
    # one on their weighted sum
    strict_logits: float = 0.0  # weight of the strict loss's logit term: the mean squared change of the logits,
    # less the class-shared shift, when the strict nodes are ablated (what strict_effect_max bounds); 0: none
    strict_grad: bool = False  # the strict loss's gradient also reaches the ablated node through its output on the
    # source (InterpBench detaches it); docs/trained.md#training says why
    clip: float = 1.0
    eval_every: int = 250
    stop_at: float = 0.995  # early stop when behaviour, mean IIA and mean strict accuracy reach it (InterpBench's 99.5 %)
    stop_effect: float = 0.01  # ... and no non-circuit node moves the output by more than this (strict_effect_max)
    atol: float = 0.05  # numerical outputs: |LL - HL| below this counts as correct (InterpBench's)
    seed: int = 0
    width_step: int = 16  # LL d_model: the compiled residual rounded up past the next multiple of this
    min_heads: int = 4  # LL heads per layer: at least this many, and at least the compiled model's
    mixture_labels: bool = False  # train on averaged compiled outputs too, labelled by their largest entry (the rule
    # two shipped models were trained with; validation never counts them; docs/trained.md#labels)
    blank_weight: float = 0.0  # weight of a term that trains the LL's output toward uniform where the compiled output
    # is blank (BLANK), in every loss: KL(uniform || softmax); 0: blank positions train nothing (docs/trained.md#labels)
    average_weight: float = 0.0  # weight of a term that trains the LL's softmax toward the compiled output where that
    # is an average of several one-hots (neither a label nor blank), in every loss: KL(average || softmax); 0: none
    centre_weight: float = 0.0  # weight of a term on the squared mean over classes of the LL's logits, in every loss:
    # softmax ignores a shift every class shares, so nothing else fixes it, yet the L2 metric counts it (shift_share)
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e uniform (torch's label_smoothing) in every
    # loss: its optimum is a finite margin, so confidence stops paying once reached (docs/trained.md#training); 0: none
    strict_focus: float = 0.0  # with strict_nodes "one": the share of steps whose strict node is drawn in proportion to
    # how much ablating it has recently cost in training (StrictFocus), not uniformly; 0: uniform draws only
    paired_share: float = 0.0  # the share of each batch's pairs whose source is its base's counterpart in the pool
    # (the clean prompt's corruption or the reverse: the minimal pairs methods are scored on), where it has one; 0: none
    paired_strict: bool = False  # with paired_share: only the strict loss's sources are paired so; IIT and behaviour
    # keep the random ones (a minimal pair's interventions leave the compiled model no answer to train IIT on)
    counterpart: str = "corruption"  # what paired_share pairs a prompt with: "corruption" (its own, as methods are
    # scored) or "swap" (the same prompt with its roles exchanged, where the task has one: IOI; the pool gains them)

    def to_dict(self) -> dict:
        return asdict(self)


# The TrainConfig fields SIITPair.loss reads (held on the pair, so validation and tests can call `loss` alone).
LOSS_OPTIONS = ("blank_weight", "average_weight", "centre_weight", "label_smoothing")


def ll_config(hl: ModelConfig, name: str, tc: TrainConfig = TrainConfig()) -> ModelConfig:
    """The LL architecture for compiled model `hl`: its layers, vocabularies, context and
    causality; at least `min_heads` heads; d_model the compiled residual rounded up past the next
    multiple of `width_step` and a multiple of the heads (wider, so the circuit's variables need
    not share dimensions, yet nothing keeps them apart either); d_mlp 4 d_model; GELU, LayerNorm;
    token and position embeddings as two input nodes, like the compiled model's graph."""
    heads = max(tc.min_heads, hl.n_heads)
    d_model = (hl.d_model // tc.width_step + 1) * tc.width_step
    d_model = math.ceil(d_model / heads) * heads
    return ModelConfig(
        name=name, n_layers=hl.n_layers, n_heads=heads, d_model=d_model, d_head=d_model // heads,
        d_mlp=4 * d_model, d_vocab=hl.d_vocab, d_vocab_out=hl.vocab_out, n_ctx=hl.n_ctx, act_fn="gelu_new",
        normalization_type="LN", causal=hl.causal, split_embed=True,
    )


def init_weights(cfg: ModelConfig, seed: int) -> Weights:
    """TransformerLens's default ("gpt2") initialisation: every weight matrix normal with standard
    deviation 0.8 / sqrt(d_model) (HookedTransformerConfig's initializer_range), biases zero,
    LayerNorm gains one and biases zero."""
    g = torch.Generator().manual_seed(seed)
    std = 0.8 / math.sqrt(cfg.d_model)
    c = cfg

    def normal(*shape):
        return torch.randn(*shape, generator=g) * std

    p = {"embed.W_E": normal(c.d_vocab, c.d_model), "pos_embed.W_pos": normal(c.n_ctx, c.d_model),
         "unembed.W_U": normal(c.d_model, c.vocab_out), "unembed.b_U": torch.zeros(c.vocab_out),
         "ln_final.w": torch.ones(c.d_model), "ln_final.b": torch.zeros(c.d_model)}
    for L in range(c.n_layers):
        b = f"blocks.{L}."
        for m in "QKV":
            p[b + f"attn.W_{m}"] = normal(c.n_heads, c.d_model, c.d_head)
            p[b + f"attn.b_{m}"] = torch.zeros(c.n_heads, c.d_head)
        p[b + "attn.W_O"] = normal(c.n_heads, c.d_head, c.d_model)
        p[b + "attn.b_O"] = torch.zeros(c.d_model)
        p[b + "mlp.W_in"] = normal(c.d_model, c.d_mlp)
        p[b + "mlp.b_in"] = torch.zeros(c.d_mlp)
        p[b + "mlp.W_out"] = normal(c.d_mlp, c.d_model)
        p[b + "mlp.b_out"] = torch.zeros(c.d_model)
        for ln in ("ln1", "ln2"):
            p[b + f"{ln}.w"] = torch.ones(c.d_model)
            p[b + f"{ln}.b"] = torch.zeros(c.d_model)
    w = Weights(cfg, p, {"source": "SIIT", "init": "TransformerLens gpt2 init", "init_seed": seed})
    w.validate()
    return w


def circuit_senders(graph: Graph, edges) -> list:
    """The heads and MLPs among the senders of ground-truth `edges` ([sender, receiver] names):
    the HL nodes of the correspondence, as sender names in graph order."""
    used = {s for s, _ in edges}
    return [s.name for s in graph.senders if s.kind != "input" and s.name in used]


@dataclass
class Correspondence:
    """HL node -> LL node, each a sender name of its graph. SIIT's correspondence here maps every
    compiled head and MLP on the circuit to the LL node at the same place (same layer, same head
    index), so the names are equal; `hl` and `ll` are the sender ids in the two graphs."""

    nodes: list  # sender names, the same in both graphs
    hl: list  # sender ids in the HL graph
    ll: list  # sender ids in the LL graph
    non_circuit: list  # LL sender ids of the heads and MLPs outside the correspondence

    @classmethod
    def same_place(cls, hl_graph: Graph, ll_graph: Graph, nodes: list) -> "Correspondence":
        hl_ids = {s.name: i for i, s in enumerate(hl_graph.senders)}
        ll_ids = {s.name: i for i, s in enumerate(ll_graph.senders)}
        missing = [n for n in nodes if n not in ll_ids]
        if missing:
            raise ValueError(f"the LL graph has no node at the place of {missing}")
        ll = [ll_ids[n] for n in nodes]
        non = [i for i, s in enumerate(ll_graph.senders) if s.kind != "input" and i not in ll]
        return cls(list(nodes), [hl_ids[n] for n in nodes], ll, non)


def _mask(n: int, ids) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[list(ids)] = True
    return m


class SIITPair:
    """The HL and LL models, their correspondence, and the losses and figures of SIIT.

    `inputs` [N, pos] token ids (BOS first) the pairs are drawn from; `scored` [pos] bool: the
    positions whose outputs are read (the task's); `categorical`: the HL outputs classes (else one
    number).
    """

    def __init__(self, hl: Weights, ll: Weights, corr: Correspondence, scored: torch.Tensor, categorical: bool,
                 atol: float = 0.05):
        self.hl, self.ll, self.corr = hl, ll, corr
        self.hl_engine, self.ll_engine = Engine(hl), Engine(ll)
        self.positions = scored.nonzero().flatten()
        self.categorical, self.atol = categorical, atol
        self.train_defined = DEFINED  # the losses' label rule (`train` sets MIXTURE for TrainConfig.mixture_labels)
        for name in LOSS_OPTIONS:  # `loss`'s settings: TrainConfig's defaults until `train` sets the config's
            setattr(self, name, getattr(TrainConfig, name))
        self.n_hl, self.n_ll = len(self.hl_engine.graph.senders), len(self.ll_engine.graph.senders)

    # ----- the HL side: labels ------------------------------------------------------------
    @torch.no_grad()
    def hl_out(self, base: torch.Tensor, source: torch.Tensor | None = None, node: int | None = None,
               source_senders: torch.Tensor | None = None) -> torch.Tensor:
        """HL outputs [B, n_scored, vocab_out] on `base`, HL node `node` (index into corr.nodes)
        taking its output on `source` when given (`source_senders`: the HL's sender outputs on
        `source`, when the caller has them)."""
        e = self.hl_engine
        if node is None:
            return e.run(base, positions=self.positions).logits
        values = e.cache(source).senders if source_senders is None else source_senders
        hold = (_mask(self.n_hl, [self.corr.hl[node]]), values)
        return e.run(base, hold=hold, positions=self.positions).logits

    def labels(self, out: torch.Tensor, defined_above: float = DEFINED) -> tuple:
        """(labels, defined): class ids [B, n] (or values [B, n]) and where the HL output is
        defined (categorical: a one-hot, amax > `defined_above`)."""
        if self.categorical:
            return out.argmax(-1), out.amax(-1) > defined_above
        return out[..., 0], torch.ones(out.shape[:2], dtype=torch.bool)

    # ----- the LL side ----------------------------------------------------------------------
    def ll_out(self, base: torch.Tensor, source_senders: torch.Tensor | None = None, ll_ids=()) -> torch.Tensor:
        """LL outputs [B, n_scored, vocab_out] on `base`, the LL senders `ll_ids` taking their
        outputs from `source_senders` [n_senders, B, pos, d_model] (detached)."""
        hold = (_mask(self.n_ll, ll_ids), source_senders) if len(ll_ids) else None
        return self.ll_engine.run(base, hold=hold, positions=self.positions).logits

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss at the positions where `target` is defined (`train_defined`); zero,
        with a zero gradient, where no position is (e.g. an interchange whose outputs are all averages).
        With `blank_weight`, plus that weight times KL(uniform || softmax(out)) averaged over the
        positions where `target` is blank (BLANK; categorical outputs only). With `average_weight`,
        plus that weight times KL(average || softmax(out)) over the positions where `target` averages
        several one-hots (neither a label nor blank), the average renormalised to sum to 1. With
        `centre_weight`, plus that weight times the squared mean over classes of `out`, averaged over
        every position: softmax ignores that mean, the L2 metric does not (`validate`'s shift_share).
        With `label_smoothing` e, the cross-entropy's target is (1 - e) the label + e uniform."""
        labels, defined = self.labels(target, self.train_defined)
        if not defined.any():
            total = out.sum() * 0.0
        elif self.categorical:
            total = torch.nn.functional.cross_entropy(out[defined].float(), labels[defined],
                                                      label_smoothing=self.label_smoothing)
        else:
            total = ((out[..., 0] - labels) ** 2)[defined].mean()
        if self.blank_weight and self.categorical:
            blank = target.amax(-1) < BLANK
            if blank.any():
                logp = torch.log_softmax(out[blank].float(), -1)
                total = total + self.blank_weight * (-logp.mean(-1) - math.log(out.shape[-1])).mean()
        if self.average_weight and self.categorical:
            average = ~defined & (target.amax(-1) >= BLANK)
            if average.any():
                p = target[average].float().clamp(min=0)
                logp = torch.log_softmax(out[average].float(), -1)
                total = total + self.average_weight * torch.nn.functional.kl_div(
                    logp, p / p.sum(-1, keepdim=True), reduction="batchmean")
        if self.centre_weight and self.categorical:
            total = total + self.centre_weight * out.float().mean(-1).pow(2).mean()
        return total

    def correct(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[k] bool per defined (row, position): the LL output agrees with the HL's."""
        labels, defined = self.labels(target)
        ok = out.argmax(-1) == labels if self.categorical else (out[..., 0] - labels).abs() < self.atol
        return ok[defined]

    def losses(self, base: torch.Tensor, source: torch.Tensor, node: int, strict_nodes: list,
               strict_grad: bool = False, only: str | None = None, strict_logits: bool = False,
               strict_source: torch.Tensor | None = None) -> dict:
        """The three losses on one batch: IIT on HL node `node` (index into corr.nodes), strict on
        the LL senders `strict_nodes` resample-ablated together (none: no strict loss), behaviour.
        `strict_grad`: the strict loss's gradient also reaches the ablated senders' own weights
        through their outputs on `source` (recomputed from the source run's detached receiver
        inputs, so nothing upstream of them); otherwise those outputs are detached, as
        InterpBench's cached activations are. `only`: that loss alone (one optimiser step per loss).
        `strict_logits`: the strict loss also gets the mean squared change of the LL's logits at the
        scored positions (the L2 effect `validate` measures) against its own unablated logits,
        detached, less the change every class shares (which softmax ignores), as "strict_logits".
        `strict_source` [B, pos]: the strict loss's sources, when they are not `source`."""
        # The default recipe keeps this order of the forwards: the shipped models retrain bit for bit.
        if only is None and not (strict_grad and strict_nodes) and not strict_logits and strict_source is None:
            with torch.no_grad():
                src = self.ll_engine.cache(source).senders
            hl_base = self.hl_out(base)
            out = {"iit": self.loss(self.ll_out(base, src, [self.corr.ll[node]]), self.hl_out(base, source, node)),
                   "behaviour": self.loss(self.ll_out(base), hl_base)}
            out["strict"] = (self.loss(self.ll_out(base, src, strict_nodes), hl_base) if strict_nodes
                             else torch.zeros((), dtype=hl_base.dtype))
            return out
        want = (only,) if only else ("iit", "behaviour", "strict")
        out = {}
        trace = src = None
        none = torch.zeros(0, dtype=torch.long)
        if "iit" in want or ("strict" in want and strict_nodes and strict_source is None):
            with torch.no_grad():
                trace = self.ll_engine.run(source, record=True, positions=none)
            src = torch.stack(trace.senders)
        if "strict" in want and strict_nodes and strict_source is not None:
            with torch.no_grad():
                trace = self.ll_engine.run(strict_source, record=True, positions=none)  # the strict loss's own; IIT's is src
            strict_src = torch.stack(trace.senders)
        else:
            strict_src = src
        hl_base = self.hl_out(base) if "behaviour" in want or "strict" in want else None
        if "iit" in want:
            out["iit"] = self.loss(self.ll_out(base, src, [self.corr.ll[node]]), self.hl_out(base, source, node))
        plain = None
        if "behaviour" in want:
            plain = self.ll_out(base)
            out["behaviour"] = self.loss(plain, hl_base)
        if "strict" in want:
            zero = torch.zeros((), dtype=hl_base.dtype)
            if not strict_nodes:
                out["strict"] = zero
                if strict_logits:
                    out["strict_logits"] = zero
                return out
            if strict_grad:
                held = self.ll_engine.sender_outputs(trace, sorted(strict_nodes))  # compact: the held senders, in order
                logits = self.ll_engine.run(base, hold=(_mask(self.n_ll, strict_nodes), held), hold_grad=True,
                                            positions=self.positions).logits
            else:
                logits = self.ll_out(base, strict_src, strict_nodes)
            out["strict"] = self.loss(logits, hl_base)
            if strict_logits:
                if plain is None:
                    with torch.no_grad():
                        plain = self.ll_out(base)
                change = logits - plain.detach()
                if change.shape[-1] > 1:  # classes: a shift shared by every class changes no probability
                    change = change - change.mean(-1, keepdim=True)
                out["strict_logits"] = (change ** 2).mean()
        return out

    @torch.no_grad()
    def validate(self, base: torch.Tensor, source: torch.Tensor) -> dict:
        """Figures on the pairs (base[i], source[i]): behaviour accuracy; IIA per HL node; strict
        accuracy per non-circuit LL node; `iia` / `strict` the mean over nodes, `*_min` the worst
        node's. `effect_per_node`: each LL node's resample-ablation effect, the mean squared change
        of the LL's outputs at the scored positions (the tracr tasks' L2 metric) when it takes its
        output on the source, over the same change when the whole input is the source's;
        `strict_effect_max` the largest over non-circuit nodes, `circuit_effect_min` the smallest
        over the correspondence's. `shift_share`: the share of the whole input's change that is one
        shift shared by every class (softmax ignores it, the L2 metric does not; 0 for numerical
        outputs). `cases`: the (row, position) cases accuracy and strict accuracy count (where the
        HL's output on the base is a label); `iia_cases_per_node`: those each IIA counts (where the
        HL's output under that node's intervention is one), so a reader sees how many cases a
        figure rests on."""
        hl_base = self.hl_out(base)
        src, hl_src = self.ll_engine.cache(source).senders, self.hl_engine.cache(source).senders  # once, for every node
        ll_base = self.ll_out(base)
        change = self.ll_out(source) - ll_base
        whole = (change ** 2).mean().item()
        # the share of that change shared by every class (softmax ignores it; the L2 metric does not)
        shift = (change.mean(-1) ** 2).mean().item() / whole if self.categorical and change.shape[-1] > 1 and whole else 0.0
        right = self.correct(ll_base, hl_base)
        acc = right.double().mean().item()
        senders = self.ll_engine.graph.senders
        iia, strict, effect, cases = {}, {}, {}, {}
        for i, n in enumerate(self.corr.nodes):
            out = self.ll_out(base, src, [self.corr.ll[i]])
            ok = self.correct(out, self.hl_out(base, source, i, hl_src))
            iia[n], cases[n] = ok.double().mean().item(), int(ok.numel())
            effect[n] = ((out - ll_base) ** 2).mean().item() / whole
        for j in self.corr.non_circuit:
            out = self.ll_out(base, src, [j])
            strict[senders[j].name] = self.correct(out, hl_base).double().mean().item()
            effect[senders[j].name] = ((out - ll_base) ** 2).mean().item() / whole
        return {"accuracy": acc, "iia": _mean(iia), "iia_min": min(iia.values()),
                "strict": _mean(strict), "strict_min": min(strict.values(), default=1.0),
                "strict_effect_max": max((effect[senders[j].name] for j in self.corr.non_circuit), default=0.0),
                "circuit_effect_min": min(effect[n] for n in self.corr.nodes), "shift_share": shift,
                "iia_per_node": iia, "strict_per_node": strict, "effect_per_node": effect, "pairs": int(base.shape[0]),
                "cases": int(right.numel()), "iia_cases_per_node": cases}


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d) if d else 1.0


@dataclass
class TrainResult:
    weights: Weights  # the trained LL, float32
    steps: int
    seconds: float
    history: list = field(default_factory=list)  # per evaluation: step, losses, figures
    stopped_early: bool = False


def draws(tc: TrainConfig, n: int, n_nodes: int, non: list):
    """Each step's random draws, in `train`'s order (seeded by `tc.seed`): base and source rows
    [batch] of an n-row pool, the HL node index for IIT, and the non-circuit LL senders the strict
    loss ablates (`tc.strict_nodes`)."""
    g = torch.Generator().manual_seed(tc.seed + 1)
    for _ in range(tc.max_steps):
        bi = torch.randint(n, (tc.batch,), generator=g)
        si = torch.randint(n, (tc.batch,), generator=g)
        node = int(torch.randint(n_nodes, (1,), generator=g))
        if not non:
            strict_nodes = []
        elif tc.strict_nodes == "one":
            strict_nodes = [non[int(torch.randint(len(non), (1,), generator=g))]]
        elif tc.strict_nodes == "all":
            strict_nodes = list(non)
        else:
            pick = torch.rand(len(non), generator=g) < 0.5
            pick[int(torch.randint(len(non), (1,), generator=g))] = True
            strict_nodes = [j for j, p in zip(non, pick.tolist()) if p]
        yield bi, si, node, strict_nodes


class StrictFocus:
    """Draws the strict loss's node toward the non-circuit nodes whose ablation costs most
    (TrainConfig.strict_focus). A node's cost is a running mean, over the training steps that
    ablated it, of its strict loss in excess of the same batch's behaviour loss, plus the logit
    term when one is trained; nodes not yet ablated count as the costliest seen. Only training
    batches feed it, never validation pairs, so the validation that gates shipping stays held out.
    Its own generator (seed + 2) leaves `draws`' sequence unchanged. A share below 1 keeps every
    node's cost current through the uniform draws; at 1 a node whose cost fell to 0 is not drawn again."""

    def __init__(self, non: list, share: float, seed: int, decay: float = 0.9):
        self.non, self.share, self.decay = list(non), share, decay
        self.cost = dict.fromkeys(self.non)
        self.g = torch.Generator().manual_seed(seed + 2)

    def pick(self, drawn: list) -> list:
        """`drawn` (one uniform node), or with probability `share` one node drawn by cost."""
        if float(torch.rand((), generator=self.g)) >= self.share:
            return drawn
        seen = [c for c in self.cost.values() if c is not None]
        top = max(seen, default=1.0)
        w = torch.tensor([top if c is None else c for c in self.cost.values()], dtype=torch.float64)
        if not float(w.sum()) > 0:
            return drawn
        return [self.non[int(torch.multinomial(w, 1, generator=self.g))]]

    def observe(self, strict_nodes: list, parts: dict) -> None:
        if len(strict_nodes) != 1:
            return
        c = (max(float(parts["strict"].detach()) - float(parts["behaviour"].detach()), 0.0)
             + float(parts["strict_logits"].detach() if "strict_logits" in parts else 0.0))
        j = strict_nodes[0]
        self.cost[j] = c if self.cost[j] is None else self.decay * self.cost[j] + (1 - self.decay) * c


def train(pair: SIITPair, inputs: torch.Tensor, val_base: torch.Tensor, val_source: torch.Tensor,
          tc: TrainConfig = TrainConfig(), progress=None, partner: torch.Tensor | None = None) -> TrainResult:
    """Train `pair.ll` in place by SIIT on random pairs of `inputs` [N, pos] (with
    `tc.paired_share`: part of them each row with its counterpart `partner` [N], -1 for none); evaluate on
    (val_base, val_source) every `eval_every` steps and stop once the behaviour accuracy and the
    mean IIA and strict accuracy reach `stop_at` and no non-circuit node's effect exceeds `stop_effect`. `progress(step, figures)` is called at each
    evaluation. Deterministic for `tc.seed` (pairs, nodes) on one machine."""
    params = [t.requires_grad_(True) for t in pair.ll.params.values()]
    pair.train_defined = MIXTURE if tc.mixture_labels else DEFINED
    for name in LOSS_OPTIONS:
        setattr(pair, name, getattr(tc, name))
    opt = torch.optim.Adam(params, lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (tc.lr_end + (tc.lr - tc.lr_end) * 0.5
                                                             * (1 + math.cos(math.pi * min(i, tc.max_steps) / tc.max_steps))) / tc.lr)
    n, n_nodes, non = inputs.shape[0], len(pair.corr.nodes), pair.corr.non_circuit
    if tc.strict_focus and tc.strict_nodes != "one":
        raise ValueError("strict_focus draws one strict node per step: use it with strict_nodes 'one'")
    focus = StrictFocus(non, tc.strict_focus, tc.seed) if tc.strict_focus and non else None
    if tc.paired_strict and not tc.paired_share:
        raise ValueError("paired_strict says which losses paired_share's pairs reach: set paired_share too")
    if tc.paired_share and (partner is None or not bool((partner >= 0).any())):
        raise ValueError("paired_share pairs prompts with their corruptions: this pool has no such pairs")
    paired = torch.Generator().manual_seed(tc.seed + 3) if tc.paired_share else None  # leaves draws' sequence as it is
    partner = partner.cpu() if partner is not None else None  # indexed by draws' CPU rows
    history, t0, step, early = [], time.perf_counter(), 0, False
    sums = {"iit": 0.0, "behaviour": 0.0, "strict": 0.0}
    try:
        for step, (bi, si, node, strict_nodes) in enumerate(draws(tc, n, n_nodes, non), start=1):
            if focus is not None:
                strict_nodes = focus.pick(strict_nodes)
            strict_source = None
            if paired is not None:
                take = (torch.rand(len(bi), generator=paired) < tc.paired_share) & (partner[bi] >= 0)
                if tc.paired_strict:
                    strict_source = inputs[torch.where(take, partner[bi], si)]
                else:
                    si = torch.where(take, partner[bi], si)
            weights = {"iit": tc.iit_weight, "behaviour": tc.behaviour_weight, "strict": tc.strict_weight}
            match = tc.strict_logits > 0
            if tc.step_per_loss:
                parts = {}
                for part, weight in weights.items():
                    parts.update(pair.losses(inputs[bi], inputs[si], node, strict_nodes, tc.strict_grad, only=part,
                                             strict_logits=match, strict_source=strict_source))
                    if part == "strict" and not strict_nodes:
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss = weight * parts[part] + (tc.strict_logits * parts["strict_logits"] if part == "strict" and match else 0)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, tc.clip)
                    opt.step()
            else:
                parts = pair.losses(inputs[bi], inputs[si], node, strict_nodes, tc.strict_grad, strict_logits=match,
                                    strict_source=strict_source)
                total = (tc.iit_weight * parts["iit"] + tc.behaviour_weight * parts["behaviour"]
                         + tc.strict_weight * parts["strict"])
                if match:
                    total = total + tc.strict_logits * parts["strict_logits"]
                opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, tc.clip)
                opt.step()
            sched.step()
            if focus is not None:
                focus.observe(strict_nodes, parts)
            for k in sums:
                sums[k] += float(parts[k].detach())
            if step % tc.eval_every == 0 or step == tc.max_steps:
                figs = pair.validate(val_base, val_source)
                k = step - (history[-1]["step"] if history else 0)
                history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                                **{f"loss_{a}": v / k for a, v in sums.items()},
                                **{a: figs[a] for a in SUMMARY}})
                sums = dict.fromkeys(sums, 0.0)
                if progress is not None:
                    progress(step, history[-1])
                if min(figs["accuracy"], figs["iia"], figs["strict"]) >= tc.stop_at and figs["strict_effect_max"] <= tc.stop_effect:
                    early = True
                    break
    finally:
        for t in params:
            t.requires_grad_(False)
    return TrainResult(pair.ll, step, time.perf_counter() - t0, history, early)
