"""Results on disk: one JSON record per (task, method, variant, reference, control), written atomically when done.

A run directory holds `records/*.json` (the source of truth: resumable, nothing lost when a run
is interrupted), `results.csv` (a tidy table regenerated from the records), `edges/<task>.json`
(the names of each task's graph edges, in score order), `scores.parquet` and `scores.csv` (every
ranking's per-edge scores with the edges' names, regenerated from the records),
`position_scores.parquet` (with --per-position: each token position's terms) and the report.
Writes go through a temporary file of a unique name, then `os.replace`, so concurrent writers
never collide; `lock()` holds an exclusive lock on the folder for a run, so a second run on it
refuses (and its `--fresh` cannot delete a live run's records). A record that is not one (empty,
not JSON, not UTF-8, missing its keys, a folder) is skipped with a warning naming the file, and
recomputed by the next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import pandas as pd

COLUMNS = [
    "task", "method", "variant", "ground_truth", "level", "auc", "pessimistic_auc", "note", "auc_lo", "auc_hi",
    "pessimistic_auc_lo", "pessimistic_auc_hi", "n_edges", "n_positive", "seconds", "device", "seed", "ablation",
    "control", "position_scramble", "dtype", "metric", "tie_floor", "round_off", "split", "status", "error",
]


ROW_KEYS = ("ground_truth", "level", "auc", "pessimistic_auc", "note", "auc_lo", "auc_hi", "pessimistic_auc_lo",
            "pessimistic_auc_hi", "n_edges", "n_positive")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


KEYS = ("task", "method", "variant", "ablation")


SCORE_COLUMNS = ["task", "method", "variant", "ablation", "control", "edge", "sender", "receiver", "edge_type",
                 "score", "tie_floor"]


def scores_frame(rec: dict, endpoints, edge_types) -> pd.DataFrame:
    """One ranking's scores as rows of SCORE_COLUMNS: edge index, its sender and receiver node
    names (None where the task's edge file is absent), ADDITION or DIRECT, the score."""
    scores = rec["scores"]
    n = len(scores)
    named = endpoints is not None and len(endpoints) == n
    frame = pd.DataFrame({
        "edge": range(n),
        "sender": [e[0] for e in endpoints] if named else None,
        "receiver": [e[1] for e in endpoints] if named else None,
        "edge_type": list(edge_types) if named else None,
        "score": pd.Series(scores, dtype="float64"),
    })
    for k in ("task", "method", "variant", "ablation"):
        frame.insert(0, k, rec[k])
    frame.insert(4, "control", rec.get("control") or "trained")
    frame["tie_floor"] = float(rec.get("tie_floor") or 0.0)
    return frame[SCORE_COLUMNS]


POSITION_COLUMNS = ["task", "method", "variant", "ablation", "control", "position", "edge", "sender", "receiver",
                    "edge_type", "score"]


def position_frame(rec: dict, endpoints, edge_types) -> pd.DataFrame:
    """One ranking's per-position terms (`position_scores` [pos][n_edges]) as rows of
    POSITION_COLUMNS, position-major: summed over positions they are the ranking's scores."""
    terms = rec["position_scores"]
    n_pos, n = len(terms), len(terms[0]) if terms else 0
    named = endpoints is not None and len(endpoints) == n
    frame = pd.DataFrame({
        "position": [p for p in range(n_pos) for _ in range(n)],
        "edge": list(range(n)) * n_pos,
        "sender": [e[0] for e in endpoints] * n_pos if named else None,
        "receiver": [e[1] for e in endpoints] * n_pos if named else None,
        "edge_type": list(edge_types) * n_pos if named else None,
        "score": pd.Series([x for row in terms for x in row], dtype="float64"),
    })
    for k in ("task", "method", "variant", "ablation"):
        frame.insert(0, k, rec[k])
    frame.insert(4, "control", rec.get("control") or "trained")
    return frame[POSITION_COLUMNS]


def edge_record(task: str, graph, ground_truth: dict | None = None) -> dict:
    """What `edges/<task>.json` holds: the graph's edges [sender, receiver] and edge types in score
    order, and each ground truth's edge indices (`ground_truth`: name -> bool [n_edges])."""
    gt = {name: mask.nonzero().flatten().tolist() for name, mask in sorted((ground_truth or {}).items())}
    return {"task": task, "graph": graph.cfg.name, "edges": [list(e) for e in graph.edge_endpoints],
            "edge_types": graph.edge_types, "ground_truth": gt}


class FolderLocked(ValueError):
    """Another run holds the output folder."""


def _problem(rec) -> str | None:
    """Why `rec` is not a record, or None."""
    if not isinstance(rec, dict):
        return f"a {type(rec).__name__}, not a record"
    missing = [k for k in KEYS if not isinstance(rec.get(k), str)]
    if missing:
        return f"no {', '.join(missing)}"
    rows = rec.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return "'rows' is not a list of rows"
    return None


def _atomic_write(path: Path, write, binary: bool = False) -> None:
    """`write(file)` into a uniquely named temporary beside `path`, then replace `path` with it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ResultStore:
    def __init__(self, out_dir):
        self.root = Path(out_dir)
        self.records_dir = self.root / "records"
        self._warned: set = set()

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's exclusive lock (`OUT/.lock`) for a run; refuse if another run has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                who = f.read().strip() or "another process"
                raise FolderLocked(f"{self.root} is in use by another circuit-bench run ({who}); wait for it to "
                                   "finish or use another --out") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            yield self
        finally:
            f.close()  # releases the lock

    def _load(self, p: Path):
        """The record in `p`, or None with a warning (once per file) when it is not one."""
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            why = _problem(rec)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            rec, why = None, f"{type(e).__name__}: {e}"
        if why is None:
            return rec
        if p not in self._warned:
            self._warned.add(p)
            warnings.warn(f"skipping {p}: {why} (it will be recomputed)", stacklevel=3)
        return None

    def path(self, task: str, method: str, variant: str, ablation: str, control: str = "trained") -> Path:
        tail = "" if control == "trained" else f"__{_slug(control)}"
        return self.records_dir / f"{_slug(task)}__{_slug(method)}__{_slug(variant)}__{_slug(ablation)}{tail}.json"

    def write(self, record: dict) -> Path:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        p = self.path(record["task"], record["method"], record["variant"], record["ablation"],
                      record.get("control", "trained"))
        text = json.dumps(record, indent=1, default=float)
        _atomic_write(p, lambda f: f.write(text))  # a record is either absent or complete
        return p

    def get(self, task: str, method: str, variant: str, ablation: str, control: str = "trained"):
        p = self.path(task, method, variant, ablation, control)
        return self._load(p) if p.exists() else None

    def records(self) -> list:
        if not self.records_dir.exists():
            return []
        loaded = (self._load(p) for p in sorted(self.records_dir.glob("*.json")))
        return [r for r in loaded if r is not None]

    def clear(self) -> None:
        if self.records_dir.exists():
            for p in self.records_dir.glob("*.json*"):
                if p.is_file():
                    p.unlink()

    def frame(self) -> pd.DataFrame:
        rows = []
        for rec in self.records():
            base = {k: rec.get(k) for k in ("task", "method", "variant", "seconds", "device", "seed", "ablation",
                                            "position_scramble", "dtype", "metric", "tie_floor", "round_off", "split", "status", "error")}
            base["control"] = rec.get("control") or "trained"
            base["reset_kind"] = rec.get("reset_kind")  # a reset control's kind (harness.core.reset, or "init")
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

    def edges_path(self, task: str) -> Path:
        return self.root / "edges" / f"{_slug(task)}.json"

    def write_edges(self, task: str, graph, ground_truth: dict | None = None) -> Path:
        """The task's edge names in score order, once per graph (what names `scores.*`), and the
        edge indices of each usable ground truth (`ground_truth`: name -> bool [n_edges]), so the
        report can draw circuits from the run folder alone."""
        return self.write_edge_record(edge_record(task, graph, ground_truth))

    def write_edge_record(self, record: dict) -> Path:
        """Write an `edge_record` (made here, or on a cluster worker and sent back) unless the
        task's file already holds it."""
        p = self.edges_path(record["task"])
        text = json.dumps(record)
        if not (p.exists() and p.read_text(encoding="utf-8", errors="replace") == text):
            p.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(p, lambda f: f.write(text))
        return p

    def edge_file(self, task: str) -> dict | None:
        """The task's edges file as written by `write_edges`, or None when absent or unreadable."""
        try:
            d = json.loads(self.edges_path(task).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def edges(self, task: str):
        """(endpoints, edge types) of the task's graph, or (None, None) when not recorded."""
        d = self.edge_file(task) or {}
        try:
            return [tuple(e) for e in d["edges"]], d["edge_types"]
        except (KeyError, TypeError):
            return None, None

    def scores(self) -> pd.DataFrame:
        """Every finished ranking's per-edge scores (trained and graph-only runs; a family such as
        ACDC's has circuits, not scores), SCORE_COLUMNS, in record order."""
        names: dict = {}
        parts = []
        for rec in self.records():
            if rec.get("status") != "ok" or not isinstance(rec.get("scores"), list) or not rec["scores"] \
                    or isinstance(rec["scores"][0], list):
                continue
            if rec["task"] not in names:
                names[rec["task"]] = self.edges(rec["task"])
            parts.append(scores_frame(rec, *names[rec["task"]]))
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("score", "tie_floor") else "object")
                                 for c in SCORE_COLUMNS})
        return pd.concat(parts, ignore_index=True)

    def position_scores(self) -> pd.DataFrame:
        """Every finished ranking's per-position terms (runs with --per-position), POSITION_COLUMNS."""
        parts = [position_frame(rec, *self.edges(rec["task"])) for rec in self.records()
                 if rec.get("status") == "ok" and isinstance(rec.get("position_scores"), list) and rec["position_scores"]]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype="float64" if c == "score" else "object") for c in POSITION_COLUMNS})
        return pd.concat(parts, ignore_index=True)

    def write_scores(self) -> tuple:
        """`scores.parquet` (string columns as categories) and `scores.csv`, atomically; and
        `position_scores.parquet` where a record holds per-position terms (--per-position)."""
        df = self.scores()
        self.root.mkdir(parents=True, exist_ok=True)
        csv, parquet = self.root / "scores.csv", self.root / "scores.parquet"
        _atomic_write(csv, lambda f: df.to_csv(f, index=False))
        compact = df.astype({c: "category" for c in SCORE_COLUMNS if df[c].dtype == object})
        _atomic_write(parquet, lambda f: compact.to_parquet(f, index=False), binary=True)
        positions = self.position_scores()
        if len(positions):
            compact = positions.astype({c: "category" for c in POSITION_COLUMNS if positions[c].dtype == object})
            _atomic_write(self.root / "position_scores.parquet", lambda f: compact.to_parquet(f, index=False), binary=True)
        return parquet, csv

    def write_csv(self) -> Path:
        p = self.root / "results.csv"
        self.root.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        _atomic_write(p, lambda f: df.to_csv(f, index=False))
        return p
