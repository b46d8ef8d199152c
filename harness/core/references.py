"""The source run that patched edges read from, and the reference outputs methods compare with.

One place builds them, so every method, faithfulness and ACDC patch from the same run:
- resample ablation (`data.ablation == "resample"`): the corrupted prompts' own run; where the
  data carries a `position_scramble` (tracr tasks, by default), its positional embeddings are
  permuted as ACDC's tracr runs do (`acdc_position_scramble`), so positional edges differ
  between the clean and the source run and patching can see them;
- zero ablation (ACDC's `--zero-ablation`): the clean prompts with every residual writer zeroed.
`source_logits` are the outputs with every edge patched from that source (under resample, the
corrupted prompts' logits; under zero ablation, the fully zero-patched clean run).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from harness.core.data import TaskData
from harness.core.engine import Engine, SenderCache


ACDC_SCRAMBLE_SEED = 49  # acdc/TLACDCExperiment.py setup_corrupted_cache: shuffle_tensor(z[0], seed=49)


def acdc_position_scramble(n_pos: int) -> torch.Tensor:
    """The permutation [n_pos] ACDC applies to `hook_pos_embed` in the corrupted run of its tracr
    tasks: `torch.manual_seed(49); torch.randperm(n_pos)` over every position, BOS included,
    the same for every row (Conmy et al. 2023, repository commit bc99ace8, acdc/acdc_utils.py
    `shuffle_tensor`). A generator seeded 49 draws the same permutation without touching torch's
    global seed."""
    return torch.randperm(n_pos, generator=torch.Generator().manual_seed(ACDC_SCRAMBLE_SEED))


def source_input_embeds(engine: Engine, data: TaskData) -> torch.Tensor:
    """The input nodes' outputs [n_inputs, batch, pos, d_model] of the resample source run: the
    corrupted prompts' embeddings, positions permuted by `data.position_scramble` if set."""
    emb = engine.input_embeddings(data.corrupted)
    if data.position_scramble is None:
        return emb
    if not engine.cfg.split_embed:
        raise ValueError("a position scramble needs the position embedding as its own input node (tracr models)")
    emb = emb.clone()
    emb[1] = emb[1][:, data.position_scramble.to(emb.device)]
    return emb


def source_cache(engine: Engine, data: TaskData) -> SenderCache:
    """Sender outputs [n_senders, batch, pos, d_model] and q/k/v of the run patched from (no
    position is unembedded: only the senders are wanted)."""
    if data.ablation == "zero":
        return engine.cache(data.clean, zero=True)
    return engine.cache(data.corrupted, input_embeds=source_input_embeds(engine, data))


@torch.no_grad()
def source_run(engine: Engine, data: TaskData, positions=None) -> tuple[SenderCache, torch.Tensor]:
    """The source's cache and its logits [batch, pos or len(positions), d_vocab_out]: every edge
    patched from it (`positions`: the columns unembedded, default all). Under resample both come
    from one recorded forward of the corrupted prompts."""
    if data.ablation == "zero":
        source = engine.cache(data.clean, zero=True)
        return source, engine.logits(data.clean, patch_all(engine), source, positions)
    trace = engine.run(data.corrupted, record=True, input_embeds=source_input_embeds(engine, data), positions=positions)
    return trace.cache(), trace.logits


def patch_all(engine: Engine) -> torch.Tensor:
    """[n_edges] ones: every edge patched."""
    return torch.ones(engine.graph.n_edges, device=engine.w.device, dtype=engine.w.dtype)


@dataclass
class References:
    """clean_logits, source_logits: [batch, pos, d_vocab_out]; source: the source run's cache."""

    clean_logits: torch.Tensor
    source_logits: torch.Tensor
    source: SenderCache


@torch.no_grad()
def references(engine: Engine, data: TaskData) -> References:
    source, source_logits = source_run(engine, data)
    return References(engine.logits(data.clean), source_logits, source)


_LOGITS_CACHE: list = []  # [(key, weights ref, data tensors, result)], most recent last
_LOGITS_CACHE_SIZE = 4
_LOGITS_CACHE_BYTES = 2**26  # larger results (pretrained models' vocabularies) are not kept


@torch.no_grad()
def reference_logits(engine: Engine, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits, source logits), each [batch, n, d_vocab_out] at the n scored columns
    (`TaskData.scored`: score them with its data), without recording either run. Small results are remembered for the last few (weights, data) pairs: every ranking's tie
    floor reads them (`MethodSpec.objective_scale`), and a task's variants share one engine and
    one data's tensors. The key is the identity of the weights (held weakly: an entry dies with
    them) and of the data's tensors (held, so no other tensor can take their identity)."""
    tensors = (data.clean, data.corrupted, data.pos_mask, data.position_scramble)
    key = (data.ablation, id(engine.w)) + tuple(id(t) for t in tensors)
    for i, (k, ref, _, result) in enumerate(_LOGITS_CACHE):
        if k == key and ref() is engine.w:
            _LOGITS_CACHE.append(_LOGITS_CACHE.pop(i))
            return result
    cols = data.scored_positions()
    clean = engine.logits(data.clean, positions=cols)
    if data.ablation == "zero":
        source = engine.logits(data.clean, patch_all(engine), engine.cache(data.clean, zero=True), cols)
    else:
        source = engine.run(data.corrupted, input_embeds=source_input_embeds(engine, data), positions=cols).logits
    if 2 * clean.numel() * clean.element_size() <= _LOGITS_CACHE_BYTES:
        _LOGITS_CACHE.append((key, weakref.ref(engine.w), tensors, (clean, source)))
        del _LOGITS_CACHE[:-_LOGITS_CACHE_SIZE]
    return clean, source
