"""Results on disk: one JSON record per (task, method, variant, reference), written atomically when done.

A run directory holds `records/*.json` (the source of truth: resumable, nothing lost when a run
is interrupted), `results.csv` (a tidy table regenerated from the records) and the report.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

COLUMNS = [
    "task", "method", "variant", "ground_truth", "level", "auc", "pessimistic_auc", "note", "auc_lo", "auc_hi",
    "pessimistic_auc_lo", "pessimistic_auc_hi", "n_edges", "n_positive", "seconds", "device", "seed", "ablation",
    "position_scramble", "dtype", "metric", "tie_floor", "split", "status", "error",
]


ROW_KEYS = ("ground_truth", "level", "auc", "pessimistic_auc", "note", "auc_lo", "auc_hi", "pessimistic_auc_lo",
            "pessimistic_auc_hi", "n_edges", "n_positive")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


class ResultStore:
    def __init__(self, out_dir):
        self.root = Path(out_dir)
        self.records_dir = self.root / "records"

    def path(self, task: str, method: str, variant: str, ablation: str) -> Path:
        return self.records_dir / f"{_slug(task)}__{_slug(method)}__{_slug(variant)}__{_slug(ablation)}.json"

    def write(self, record: dict) -> Path:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        p = self.path(record["task"], record["method"], record["variant"], record["ablation"])
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=float))
        os.replace(tmp, p)  # atomic: a record is either absent or complete
        return p

    def get(self, task: str, method: str, variant: str, ablation: str):
        p = self.path(task, method, variant, ablation)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def records(self) -> list:
        if not self.records_dir.exists():
            return []
        out = []
        for p in sorted(self.records_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def clear(self) -> None:
        if self.records_dir.exists():
            for p in self.records_dir.glob("*.json*"):
                p.unlink()

    def frame(self) -> pd.DataFrame:
        rows = []
        for rec in self.records():
            base = {k: rec.get(k) for k in ("task", "method", "variant", "seconds", "device", "seed", "ablation",
                                            "position_scramble", "dtype", "metric", "tie_floor", "split", "status", "error")}
            faith = rec.get("faithfulness") or {}
            base.update({"cpr": faith.get("cpr"), "cmd": faith.get("cmd")})
            if rec.get("rows"):
                for r in rec["rows"]:
                    rows.append({**base, **{k: r.get(k) for k in ROW_KEYS}, **{k: v for k, v in r.items() if k not in COLUMNS and k != "roc"}})
            else:
                rows.append({**base, "ground_truth": None, "level": None})
        df = pd.DataFrame(rows)
        for c in COLUMNS:
            if c not in df.columns:
                df[c] = None
        extra = [c for c in df.columns if c not in COLUMNS]
        return df[COLUMNS + extra]

    def write_csv(self) -> Path:
        p = self.root / "results.csv"
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".csv.tmp")
        self.frame().to_csv(tmp, index=False)
        os.replace(tmp, p)
        return p
