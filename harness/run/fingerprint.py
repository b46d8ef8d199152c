"""What determines a stored result, so that resume reuses a record only when all of it matches.

A record's fingerprint is a flat dict: the options that change its result (seed, split, dtype,
metric, device, bootstrap, ...; only those its method reads), the package version, and digests
of its inputs: the task's data, the model's weights and every ground-truth file of the task.
`differences` names what changed, in words a user can act on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import torch


def _update(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def data_digest(data) -> str:
    """Digest of a TaskData's tensors, its metrics' names and fields, its options (not the reference,
    which is part of a record's key)."""
    h = hashlib.blake2b(digest_size=12)
    for f in fields(data):
        v = getattr(data, f.name)
        if f.name == "ablation":
            continue
        h.update(f.name.encode())
        if isinstance(v, torch.Tensor):
            _update(h, v)
        elif isinstance(v, dict) and f.name == "rows":
            for k in sorted(v):
                h.update(k.encode())
                _update(h, v[k])
        elif f.name in ("metric", "loss"):
            h.update(repr(None if v is None else (v.name, getattr(v.fn, "__qualname__", ""), sorted(v.reads.items()),
                                                   sorted((k, repr(c)) for k, c in v.const.items()))).encode())
        else:
            h.update(json.dumps(v, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def weights_digest(weights) -> str:
    """Digest of every parameter tensor (GPT-2 small: about half a second) and the config."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps(weights.cfg.to_dict(), sort_keys=True, default=str).encode())
    for k in sorted(weights.params):
        h.update(k.encode())
        _update(h, weights.params[k])
    return h.hexdigest()


def file_digests(paths) -> dict:
    """File name -> digest of its bytes (unreadable: the error's name)."""
    out = {}
    for p in sorted(Path(p) for p in paths):
        try:
            out[p.name] = hashlib.blake2b(p.read_bytes(), digest_size=12).hexdigest()
        except OSError as e:
            out[p.name] = f"unreadable ({type(e).__name__})"
    return out


def task_inputs(task, weights, data) -> dict:
    """The digests shared by every record of one loaded task."""
    return {"data": data_digest(data), "weights": weights_digest(weights),
            "ground_truth_files": file_digests(getattr(task, "ground_truth_paths", list)())}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("circuit-bench")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "not installed"


def fingerprint(cfg, spec, variant: str, inputs: dict, control: str = "trained", reset_kind=None) -> dict:
    """Everything that determines one record's result (`cfg`: the RunConfig; `spec`: the method;
    a reset control: its reset kind and number of reset networks, and no bootstrap or faithfulness)."""
    fp = {"version": package_version(), "seed": cfg.seed, "split": cfg.split, "device": cfg.device,
          "dtype": cfg.dtype, "metric": cfg.metric, "position_scramble": cfg.position_scramble}
    if control == "reset":
        return {**fp, "control": control, "reset_kind": reset_kind, "reset_seeds": cfg.reset_seeds, **inputs}
    if spec.output != "family":
        fp["faithfulness"] = cfg.faithfulness
    if getattr(cfg, "per_position", False) and spec.supports_per_position(variant):
        fp["per_position"] = True  # a record without position scores is recomputed to add them
    if not spec.chance:
        fp["bootstrap"] = cfg.bootstrap
        if not spec.supports_per_example(variant):  # an interval needs re-runs (ACDC)
            fp["bootstrap_reruns"] = cfg.bootstrap_reruns
    return {**fp, **inputs}


LABELS = {"version": "package version", "data": "the task's data", "weights": "the model's weights",
          "ground_truth_files": "the ground-truth files", "bootstrap": "--bootstrap",
          "bootstrap_reruns": "--bootstrap-reruns", "faithfulness": "faithfulness (--no-faithfulness)",
          "position_scramble": "position scramble (--no-position-scramble)", "seed": "--seed", "split": "--split",
          "device": "--device", "dtype": "--dtype", "metric": "--metric", "reset_seeds": "--reset-seeds",
          "reset_kind": "the task's reset kind", "per_position": "--per-position"}


def differences(stored, current: dict) -> list:
    """What differs between a stored fingerprint and the current one, each as a short phrase."""
    if not isinstance(stored, dict):
        return ["it was stored without a fingerprint (an older version)"]
    out = []
    for k, v in current.items():
        old = stored.get(k)
        if old == v:
            continue
        label = LABELS.get(k, k)
        if k == "ground_truth_files" and isinstance(old, dict):
            names = sorted(n for n in set(old) | set(v) if old.get(n) != v.get(n))
            out.append(f"ground truth changed ({', '.join(names)})")
        elif k in ("data", "weights", "ground_truth_files"):
            out.append(f"{label} changed")
        else:
            out.append(f"{label} {old!r} -> {v!r}")
    return out
