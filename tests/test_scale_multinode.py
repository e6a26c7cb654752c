"""Two Ray nodes on one machine, each its own `ray start` process with its own logical CPUs: `ingest --engine ray`
and `features --engine ray` at the head's address spread their work over both, both nodes take part, and the
items and vectors equal the local engine's.

Two logical CPUs per node: the actor pool then reserves 0.75 CPU per actor (two per node, half a CPU left for
Ray Data's read tasks), so no node can take a third and the spread is certain; with one CPU per node two
half-CPU actors may share a node."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from curata.features.engine import compute, load_matrix, make_extractor
from curata.ingest.pipeline import ingest
from curata.scale.local_cluster import local_cluster
from curata.workspace import Workspace

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """A head node and a second node, two logical CPUs each, as separate processes; yields the head's address
    and the environment to reach it with. Every Ray client is its own process (as a user's command is): this
    test process never joins the cluster, so it shares no Ray state with the other tests' runtimes."""
    with local_cluster(tmp_path_factory.mktemp("ray-nodes"), env={"CURATA_FEATURE_CACHE": "off"}) as running:
        yield running


def write_table(root: Path, n: int = 48) -> Path:
    rows = []
    for i in range(n):
        colour = [(200, 40, 40), (40, 170, 60), (40, 60, 200)][i % 3]
        write_image(root / "img" / f"{i:03d}.png", size=(20 + i % 7, 18 + i % 5), color=colour)
        rows.append({"image": f"img/{i:03d}.png", "label": str(i % 3)})
    (root / "img" / "047.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # one broken image
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    return root / "items.csv"


def test_ingest_on_two_nodes_equals_the_local_engine(cluster, tmp_path):
    address, env = cluster
    table = write_table(tmp_path)
    local = ingest(table, Workspace(tmp_path / "local"))
    done = subprocess.run([sys.executable, "-m", "curata.cli", "ingest", str(table), "-w", str(tmp_path / "ray"),
                           "--engine", "ray", "--ray-address", address, "--json"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    remote = json.loads(done.stdout)
    assert remote["summary"]["nodes"] == 2  # tasks of both nodes verified images
    assert [(e["id"], e["code"], e["reason"]) for e in remote["entries"]] == \
        [(e.id, e.code, e.reason) for e in local.entries]
    assert remote["summary"]["errors"] == 1
    columns = ["id", "image_sha256", "width", "height"]
    pd.testing.assert_frame_equal(Workspace(tmp_path / "ray").items(columns).sort_values("id", ignore_index=True),
                                  Workspace(tmp_path / "local").items(columns).sort_values("id", ignore_index=True))


def test_features_on_two_nodes_equal_the_local_engine(cluster, tmp_path):
    address, env = cluster
    table = write_table(tmp_path)
    local_ws, ray_ws = Workspace(tmp_path / "local"), Workspace(tmp_path / "ray")
    ingest(table, local_ws)
    ingest(table, ray_ws)
    local = compute(make_extractor("color_stats"), local_ws)
    done = subprocess.run([sys.executable, "-m", "curata.cli", "features", "-w", str(ray_ws.root), "-e", "color_stats",
                           "--engine", "ray", "--ray-address", address, "--batch-size", "2", "--json"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (remote,) = json.loads(done.stdout)
    assert remote["nodes"] == 2 and "on 2 Ray nodes" in remote["notes"][-1]  # both nodes' actors computed some
    assert (remote["computed"], remote["errors"]) == (local.computed, local.errors) == (47, 0)
    got, errors = load_matrix(ray_ws, make_extractor("color_stats"))
    expected, _ = load_matrix(local_ws, make_extractor("color_stats"))
    assert errors == [None] * 47
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
