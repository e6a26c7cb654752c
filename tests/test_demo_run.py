"""`curata demo` end to end, small: draw, ingest, every default extractor, checks; a rerun computes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_is_cached(tmp_path):
    cmd = [sys.executable, "-m", "curata.cli", "demo", "-w", str(tmp_path / "ws"), "--per-algorithm", "3",
           "--size", "64", "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout)
    assert summary["tokens"] == 24 and len(summary["algorithms"]) == 8
    assert summary["ingest"]["ok"] == 24 and summary["ingest"]["errors"] == 0
    runs = {r["extractor"].split("@")[0]: r for r in summary["features"]}
    assert set(runs) == {"color_stats", "color_hist", "palette", "effnet_lite0", "minilm", "tfidf"}
    assert all(r["errors"] == 0 and r["computed"] > 0 for r in runs.values())
    # The palette namer agrees with the colour the generator painted for most tokens.
    assert summary["checks"]["colour_namer_agrees_with_color_trait"] >= 0.8
    assert 0 <= summary["checks"]["1nn_algorithm_accuracy[effnet_lite0]"] <= 1

    tasks = {t["name"]: t for t in summary["tasks"]}
    assert set(tasks) == {"demo-algorithm", "demo-colour", "demo-tags"}
    algorithm = tasks["demo-algorithm"]
    assert algorithm["metrics"]["accuracy"] > 0.125  # better than chance over 8 algorithms
    assert Path(algorithm["report"]).is_file() and (Path(algorithm["bundle"]) / "card.json").is_file()
    assert "micro_f1" in tasks["demo-tags"]["metrics"]

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(second.stdout)
    assert again["ingest"]["unchanged"] == 24
    assert all(r["computed"] == 0 for r in again["features"])
