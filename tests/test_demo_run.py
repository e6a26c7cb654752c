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

    clusters = summary["clusters"]
    assert clusters["k"] == 8 and len(clusters["names"]) == 8 and Path(clusters["map"]).is_file()
    assert -1 <= clusters["scores"]["ari"] <= 1

    described = summary["descriptions"]
    assert len(described["tokens"]) == 4 and all(t["sentence"].endswith(".") for t in described["tokens"])
    assert set(described["keywords_at_5"]) >= {"neighbours", "popularity baseline"}
    search = summary["search"]
    assert search["queries"][0]["query"].startswith("a voronoi")
    assert all(len(q["hits"]) == 3 for q in search["queries"])

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(second.stdout)
    assert again["ingest"]["unchanged"] == 24
    assert all(r["computed"] == 0 for r in again["features"])


@pytest.mark.slow
def test_cluster_duplicates_and_themes_commands(tmp_path):
    base = [sys.executable, "-m", "curata.cli"]
    ws = str(tmp_path / "ws")
    demo = subprocess.run([*base, "demo", "-w", ws, "--per-algorithm", "2", "--size", "48", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    cluster = subprocess.run([*base, "cluster", "-w", ws, "-f", "color_hist", "-k", "3", "--json"],
                             capture_output=True, text=True, timeout=300)
    assert cluster.returncode == 0, cluster.stderr[-2000:]
    assert json.loads(cluster.stdout)["k"] == 3
    too_many = subprocess.run([*base, "cluster", "-w", ws, "-f", "color_hist", "-k", "500"], capture_output=True,
                              text=True, timeout=300)
    assert too_many.returncode == 2 and "500" in too_many.stderr
    dup = subprocess.run([*base, "duplicates", "-w", ws, "--json"], capture_output=True, text=True, timeout=300)
    assert dup.returncode == 0 and json.loads(dup.stdout)["items"] == 16
    themes = subprocess.run([*base, "themes", "-w", ws, "--json"], capture_output=True, text=True, timeout=300)
    assert themes.returncode == 0, themes.stderr[-2000:]
    assert json.loads(themes.stdout)["themes"]
