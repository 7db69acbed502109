"""Project files a user relies on: docker-compose.yml, README, settings."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import app.config as settings_mod
from app.errors import ConfigError
from tests.helpers import ROOT


def test_docker_compose_parses_and_names_the_settings_the_app_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "worker", "kafka-1", "kafka-2", "kafka-3", "worker-cluster"}
    assert all("profiles" not in services[s] for s in ("kafka", "worker"))  # `docker compose up`: as before
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", services["kafka"]["image"])
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka_env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    worker = services["worker"]
    assert worker["build"] == "."
    assert set(worker["environment"]) <= set(settings_mod.ENV_VARS)
    assert worker["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["environment"]["WEB_PORT"] == "6066"
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"faust", "-A", "app", "worker"' in dockerfile
    # the image builds the compiled book core (setup.py, a C compiler) and refuses to run without it
    assert "COPY pyproject.toml setup.py" in dockerfile
    assert "gcc" in dockerfile
    assert "BOOK_CORE=compiled" in dockerfile
    for name in ("worker", "worker-cluster"):  # bound to 0.0.0.0: the control endpoints need a token
        env = services[name]["environment"]
        assert env["WEB_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
        assert env["WEB_CONTROL_TOKEN"].startswith("${WEB_CONTROL_TOKEN:?")  # compose refuses to start without


def test_docker_compose_cluster_profile_is_three_replicating_nodes_and_a_worker_on_all() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = {n: services[f"kafka-{n}"] for n in (1, 2, 3)}
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    for n, svc in nodes.items():
        env = svc["environment"]
        assert svc["profiles"] == ["cluster"]
        assert svc["image"] == services["kafka"]["image"]
        assert env["KAFKA_NODE_ID"] == str(n)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert f"PLAINTEXT://kafka-{n}:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert (env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"],
                env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == ("3", "3", "3")
        assert (env["KAFKA_MIN_INSYNC_REPLICAS"], env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == ("2", "2")
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert env["KAFKA_LOG_RETENTION_MS"] == "-1"
    assert len({svc["environment"]["CLUSTER_ID"] for svc in nodes.values()}) == 1  # one cluster id
    assert len({p for svc in nodes.values() for p in svc["ports"]}) == 3
    assert len({v for svc in nodes.values() for v in svc["volumes"]}) == 3  # a volume each
    worker = services["worker-cluster"]
    assert worker["profiles"] == ["cluster"]
    assert set(worker["depends_on"]) == set(f"kafka-{n}" for n in nodes)
    assert set(worker["environment"]) <= set(settings_mod.ENV_VARS)
    assert worker["environment"]["KAFKA_BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert (worker["environment"]["TOPIC_REPLICATION"], worker["environment"]["MIN_INSYNC_REPLICAS"]) == ("3", "2")


def test_readme_documents_every_setting_and_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in settings_mod.ENV_VARS:
        assert f"`{name}`" in readme, f"README does not document {name}"
    commands = re.findall(r"^(make \w[\w-]*)", readme, flags=re.M)
    assert commands[:2] == ["make run", "make test"]


def test_readme_documents_every_command() -> None:
    """Every ``faust -A app <command>`` the project defines is in the README."""
    readme = (ROOT / "README.md").read_text()
    names = [m.group(1) for path in (ROOT / "app").rglob("*.py")
             for m in re.finditer(r"@app\.command\((?:.|\n)*?\)\n(?:async )?def (\w+)\(", path.read_text())]
    assert "verify" in names
    for name in names:
        assert f"faust -A app {name.rstrip('_').replace('_', '-')}" in readme, f"README does not document {name}"


def test_makefile_help_lists_every_phony_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.+)$", makefile, flags=re.M)
    assert phony is not None
    documented = set(re.findall(r"^([a-z][\w-]*):.*## ", makefile, flags=re.M))
    assert set(phony.group(1).split()) == documented


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_mod.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("F_DATADIR", raising=False)
    s = settings_mod.load()
    assert (s.kafka_bootstrap, s.web_host, s.web_port, s.partitions) == ("127.0.0.1:9092", "127.0.0.1", 6066, 4)
    assert (s.depth_interval_ms, s.depth_levels) == (1000, 20)
    assert s.broker_url == "kafka://127.0.0.1:9092"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("KAFKA_BOOTSTRAP", "localhost", "is not host:port"),
    ("WEB_PORT", "http", "is not a whole number"),
    ("WEB_PORT", "70000", "at most 65535"),
    ("TOPIC_PARTITIONS", "0", "at least 1"),
    ("LOG_LEVEL", "loud", "must be one of"),
    ("APP_ID", "a b", "may only hold"),
    ("COMMIT_INTERVAL_S", "soon", "is not a number"),
    ("EVENT_LOOP", "trio", "must be uvloop or asyncio"),
    ("INGEST_WS_COMPRESSION", "gzip", "must be none or deflate"),
    ("STATIC_MEMBERSHIP", "maybe", "is not true or false"),
    ("CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO", "1.5", "must be between 0 and 1"),
    ("RAW_BATCH_MAX_BYTES", str(64 * 2**20), "at most"),
    ("STATE_COMMIT_INTERVAL_MS", "0", "at least 1"),
])
def test_bad_settings_are_clear_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as info:
        settings_mod.load()
    assert name in str(info.value)


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports (absolute imports, at any depth of the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted([*(ROOT / "bench").glob("*.py"), ROOT / "scripts" / "harness.py"]),
                         ids=lambda p: p.name)
def test_bench_and_the_harness_never_import_the_test_package(path: Path) -> None:
    tests = {m for m in imported_modules(path) if m == "tests" or m.startswith("tests.")}
    assert not tests, f"{path.relative_to(ROOT)} imports {sorted(tests)}: shared helpers belong in scripts/harness.py"


def test_bench_refuses_an_unknown_step_before_starting_anything() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py")], env={"BENCH_ONLY": "throughput,nope",
                          "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "unknown BENCH_ONLY step(s) nope; steps: baseline, throughput" in proc.stderr


def test_bench_profile_is_split_by_package_and_path(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "profile.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = tmp_path / "profile.txt"
    raw.write_text("run (asyncio/events.py:80);handle (agents/books.py:250);_set (faust/stores/rocksdb.py:480) 3\n"
                   "run (asyncio/events.py:80);send (aiokafka/producer/producer.py:510) 1\n")
    prof = bench.profile_top(raw)
    assert prof["samples"] == 4
    assert prof["self_pct_by_package"] == {"faust": 75.0, "aiokafka": 25.0}
    assert prof["pct_with_bookstream_on_stack"] == 75.0
    assert prof["pct_by_path"]["faust/aiokafka producing (changelog and output records)"] == 25.0


CORE = ["app.book", "app.sync", "app.wire", "app.state", "app.processor", "app.venues", "app.publishing",
        "app.outputs", "app.runtime", "app.router", "app.capture.formats", "app.ingest.sink", "app.config"]


def test_importing_the_core_builds_no_app_and_reads_no_environment() -> None:
    """A fresh interpreter imports every core module with settings that would stop the worker:
    nothing is built (no faust, no app.main/app.worker) and nothing complains."""
    import os
    import subprocess
    import sys

    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "built = sorted(m for m in ('faust', 'app.main', 'app.worker', 'agents.books') if m in sys.modules)\n"
            + "assert not built, built\n")
    env = {**os.environ, "TOPIC_PARTITIONS": "not-a-number", "KAFKA_BOOTSTRAP": "", "FEEDS": "nowhere:X"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _bench_run(monkeypatch: pytest.MonkeyPatch) -> Any:
    """bench/run.py as a module (it is a script, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_bench_latency_refuses_an_input_with_no_top_change_before_starting_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A latency step of frames that change no top would report nan: it fails, saying why."""
    import asyncio

    bench = _bench_run(monkeypatch)
    with pytest.raises(ValueError, match="change no top of book: nothing to measure"):
        asyncio.run(bench.measure_latency(None, [], 50.0, 0))  # no namespace: nothing may be started


def test_bench_counts_the_cores_each_process_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cores_waited``: one more CPU-bound process than there are cores must wait for one, and the
    bench says how long; a process that is gone has no figure."""
    import os
    import subprocess
    import sys

    bench = _bench_run(monkeypatch)
    cores = len(os.sched_getaffinity(0))
    # each spins for 0.6 s of CPU, says so, and stays (read after the work, a process must exist)
    spin = ("import sys, time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
            "print('spun', flush=True)\nsys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(cores + 1)]
    try:
        _, used, waited = bench.cores_used([p.pid for p in procs], lambda: [p.stdout.readline() for p in procs])
        for p in procs:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    # cores + 1 processes of 0.6 s each on ``cores`` cores: at least 0.6 s of waiting among them,
    # whatever else runs (the figures are per second of the run)
    assert all(w is not None for w in waited), waited
    assert sum(used) > 0
    assert sum(waited) > 0.1, (used, waited)
    assert bench.waited_seconds(procs[0].pid) is None  # reaped: no /proc entry
    assert bench.waited_seconds("self") is not None


def test_bench_counts_what_ran_beside_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ran beside a step: every process neither of the step nor started by one of its
    processes, however deep; a pid used again by another process counts whole; interrupts apart."""
    bench = _bench_run(monkeypatch)
    # pid: (parent, name, CPU seconds, started)
    before = {100: (1, "bench", 1.0, 5), 101: (100, "faust", 0.0, 6), 200: (1, "python", 4.0, 7),
              300: (2, "kdamond.0", 10.0, 1), 400: (1, "old", 7.0, 5), 500: (101, "sub", 0.0, 8)}
    after = {100: (1, "bench", 2.0, 5), 101: (100, "faust", 5.0, 6), 200: (1, "python", 6.0, 7),
             201: (200, "python", 0.5, 20),  # a stranger's child, started meanwhile: all its CPU
             300: (2, "kdamond.0", 10.1, 1), 400: (1, "new", 3.0, 30),  # pid 400 used again: all of it
             500: (101, "sub", 9.0, 8), 600: (500, "deep", 1.0, 25)}  # the step's, however deep
    rest = bench.rest_of_machine(before, after, {100}, elapsed=2.0, irq=0.2)
    assert rest["other"] == round((2.0 + 0.5 + 0.1 + 3.0) / 2.0, 2)
    assert rest["interrupts"] == 0.1
    assert rest["busiest_other"] == {"new (400)": 1.5, "python (200)": 1.0, "python (201)": 0.25}


def test_bench_names_what_ran_beside_a_step(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """On the machine itself: a process the step did not start (as a worker left behind by a
    killed run) is counted beside the step, and said; one the step started is the step's own."""
    import subprocess
    import sys
    import time

    bench = _bench_run(monkeypatch)

    def cpu(pid: int) -> float:
        return bench.processes()[pid][2]

    # a stranger: started by a shell that exits at once, so that it is no child of this process
    # (and ends by itself within a minute whatever happens to this test)
    shell = subprocess.run(["sh", "-c", 'timeout 60 "$0" -c "while True: pass" >/dev/null 2>&1 & echo $!',
                            sys.executable], capture_output=True, text=True, check=True)
    keeper = int(shell.stdout.strip())
    children = Path(f"/proc/{keeper}/task/{keeper}/children")
    deadline = time.monotonic() + 10
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.01)
    stranger = int(children.read_text().split()[0])
    ours = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        rest: dict[str, Any] = {}
        spun = cpu(stranger)
        bench.cores_used([], lambda: time.sleep(2.0), rest)
        spun = (cpu(stranger) - spun) / 2.0
    finally:
        ours.kill()
        ours.wait()
        subprocess.run(["kill", str(keeper)], check=False)
    assert spun >= 0.1, spun  # it had a share of a core, counted beside the step with the rest
    assert rest["other"] >= spun - 0.02, (rest, spun)
    assert rest["interrupts"] >= 0
    assert not any(f"({ours.pid})" in name for name in rest["busiest_other"]), rest
    assert "WARNING: processes beside this step used" in capsys.readouterr().err


def test_bench_worst_moments_say_when_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worst moment of a latency run carries its wall-clock time, to set beside a broker's log."""
    bench = _bench_run(monkeypatch)
    t = 1_796_000_000.25  # 2026-11-30 00:53:20.250 UTC
    moments = [(t, 30.0, 20.0, 5.0, 5.0), (t + 0.5, 10.0, 5.0, 3.0, 2.0), (t + 2.0, 12.0, 6.0, 3.0, 3.0),
               (t - 5.0, 1.0, 0.5, 0.2, 0.3)]
    worst = bench.worst_moments(moments, n=2)
    assert [(m["at"], m["at_s"], m["ms"]) for m in worst] == [("00:53:20.250", 5.0, 30.0), ("00:53:22.250", 7.0, 12.0)]
