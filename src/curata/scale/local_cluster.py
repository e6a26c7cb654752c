"""A Ray cluster of several nodes on one machine, each node its own `ray start --block` process with its own
logical CPUs: what the multi-node test and benchmark run curata against, and a way to try `--ray-address`
without a cluster.

Every Ray client of such a cluster should be its own process (as a user's command is): a process that has
joined it and then starts a local runtime of its own mixes the two runtimes' state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        sys.exit("fewer than " + sys.argv[2] + " nodes alive")
    time.sleep(0.5)
"""


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on loopback right now."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _start_node(args: list[str], cpus: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block ...`: the process owns the node's daemons and takes them down when terminated. Each
    node gets its own agent and metrics ports, so several can share a machine."""
    agent, grpc, metrics, runtime_env = free_ports(4)
    return subprocess.Popen([_ray_cli(), "start", "--block", f"--num-cpus={cpus}", "--disable-usage-stats",
                             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
                             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", *args],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@contextmanager
def local_cluster(logs: Path, nodes: int = 2, cpus_per_node: int = 2, timeout: float = 120.0,
                  env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a head and `nodes - 1` more nodes; yield the head's address (for `--ray-address`) and the
    environment a client process should run with. Every node is stopped on exit, also after a failure.

    Token authentication is off (`RAY_AUTH_MODE=disabled`): the nodes listen on loopback only."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    (gcs,) = free_ports(1)
    address = f"127.0.0.1:{gcs}"
    started = [_start_node(["--head", f"--port={gcs}", "--include-dashboard=false", "--node-ip-address=127.0.0.1"],
                           cpus_per_node, env, logs / "node-0.log")]

    def logs_tail() -> str:
        return " | ".join(p.read_text(errors="replace")[-800:] for p in sorted(logs.glob("node-*.log")))

    try:
        deadline = time.monotonic() + timeout
        while socket.socket().connect_ex(("127.0.0.1", gcs)) != 0:
            if time.monotonic() > deadline or started[0].poll() is not None:
                raise RuntimeError(f"the head node did not come up: {logs_tail()}")
            time.sleep(0.5)
        for i in range(1, nodes):
            started.append(_start_node([f"--address={address}", "--node-ip-address=127.0.0.1"], cpus_per_node, env,
                                       logs / f"node-{i}.log"))
        waited = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address, str(nodes), str(timeout)], env=env,
                                capture_output=True, text=True, timeout=timeout + 60, check=False)
        if waited.returncode != 0:
            raise RuntimeError(f"the other nodes did not come up: {waited.stderr[-800:]} {logs_tail()}")
        yield address, env
    finally:
        for p in reversed(started):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        # `ray start` leaves the machine's "current cluster" address behind; a later bare ray.init() would try to
        # join it (curata itself starts local runtimes with address="local", which ignores it).
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink(missing_ok=True)
