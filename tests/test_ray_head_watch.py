"""The search driver's watch on the Ray head (search/cluster.watch_head), without Ray: a GCS port that stops answering
is one line on stderr and exit code 1; a watch stopped first (the driver's own ray.shutdown) never fires. The whole
fault, a real head SIGKILLed under a search: tests/integration/test_ray_head_lost.py (slow)."""

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

from blocksearch.search import cluster
from blocksearch.study import SearchConfig
from tests.integration.conftest import ROOT

WATCHED = textwrap.dedent("""
    import socket, sys, threading, time
    from blocksearch.search import cluster
    from blocksearch.study import SearchConfig
    cluster.HEAD_POLL_S = 0.05
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    cfg = SearchConfig(study="s", storage="sqlite:////x/s.db", address=f"127.0.0.1:{port}")
    cluster.watch_head(f"127.0.0.1:{port}", cfg, threading.Event())
    time.sleep(0.5)  # answering: nothing happens
    print("alive", flush=True)
    server.close()  # the head is gone
    time.sleep(30)
    print("never", flush=True)
""")


def test_a_lost_head_is_one_line_and_exit_code_1():
    run = subprocess.run([sys.executable, "-c", WATCHED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == "alive\n", (run.stdout, run.stderr)
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("blocksearch: lost the Ray head at 127.0.0.1:") and "(Connection refused)" in line
    assert "study 's' in sqlite:////x/s.db keeps every finished trial" in line and line.endswith(
        "rerun the same command to resume")


def test_a_stopped_watch_never_fires(monkeypatch):
    monkeypatch.setattr(cluster, "HEAD_POLL_S", 0.02)
    fired = []
    monkeypatch.setattr(cluster.os, "_exit", fired.append)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()
    thread = cluster.watch_head(f"127.0.0.1:{port}", SearchConfig(study="s", storage="x"), stop)
    time.sleep(0.1)
    stop.set()  # as stop_ray does before its ray.shutdown
    server.close()
    thread.join(5)
    assert not thread.is_alive() and fired == []


def test_token_auth_is_set_only_before_ray_is_imported_and_never_for_an_address(monkeypatch):
    from blocksearch.search.cluster import local_ray_auth

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    local_ray_auth("127.0.0.1:6379")  # --address: that cluster's own setting rules
    assert "RAY_AUTH_MODE" not in os.environ
    local_ray_auth(None)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's choice stands
    local_ray_auth(None)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setitem(sys.modules, "ray", object())  # Ray already imported: it read the variable then
    local_ray_auth(None)
    assert "RAY_AUTH_MODE" not in os.environ
