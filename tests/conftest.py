"""Fixtures: a real Kafka broker, isolated namespaces per test, a simulator-fed worker per module.

When ``KAFKA_BOOTSTRAP`` is unset the project's own broker is started through
``scripts/kafka.sh`` on its own port and data dir (``TEST_KAFKA_PORT``, default 19092,
``.data/kafka-test``), so a broker a developer already runs on 9092 is left alone; it is
stopped at the end of the session if this session started it.

``TEST_KAFKA_NODES=3`` runs the whole suite on a replicated three-node cluster instead (the
``cluster`` fixture: free ports, ``.data/kafka-test-cluster``); tests that need a cluster
(node kills, leader failover) ask for ``cluster`` themselves and get it in any case.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.harness import Cluster
from tests.helpers import (
    CAPTURES,
    ROOT,
    Broker,
    Namespace,
    SimSite,
    SimSiteFactory,
    Simulator,
    Worker,
    feeds_spec,
    wait_for,
)

# The long fault scenarios run in `make chaos` (CHAOS=1), not in `make test`.
collect_ignore = [] if os.environ.get("CHAOS") else ["chaos"]

TEST_PORT = os.environ.get("TEST_KAFKA_PORT", "19092")
TEST_SASL_PORT = str(int(TEST_PORT) + 2)  # controller is TEST_PORT + 1
SASL_USER, SASL_PASSWORD = "bookstream-test", "planted-sasl-password-4R"
TEST_NODES = os.environ.get("TEST_KAFKA_NODES", "1")
if TEST_NODES not in ("1", "3"):
    raise pytest.UsageError(f"TEST_KAFKA_NODES={TEST_NODES!r}: 1 (one broker) or 3 (a replicated cluster)")
CLUSTER_DIR = ROOT / ".data" / "kafka-test-cluster"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A replicated three-node KRaft cluster (scripts/kafka.sh, KAFKA_NODES=3) on free ports,
    data under .data/kafka-test-cluster (wiped first), with a SASL listener per node; stopped at
    the end of the session. A cluster that cannot start fails the test, never skips it."""
    c = Cluster(CLUSTER_DIR, 3, sasl=True, KAFKA_SASL_USERS=f"{SASL_USER}:{SASL_PASSWORD}")
    # A previous session killed before its teardown may have left this data dir's nodes running.
    leftover = c.run("down")
    if leftover.returncode != 0:
        pytest.fail(f"could not stop the nodes left running from {CLUSTER_DIR}:\n{leftover.stderr}")
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    up = c.run("up")
    if up.returncode != 0:
        c.run("down")
        pytest.fail(f"could not start the three-node test cluster (KAFKA_NODES=3 scripts/kafka.sh up):\n{up.stderr}")
    try:
        yield c
    finally:
        c.run("down")


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap address of a reachable broker (ours, started on demand, or KAFKA_BOOTSTRAP's);
    with TEST_KAFKA_NODES=3, of the three-node ``cluster``."""
    if TEST_NODES == "3" and not os.environ.get("KAFKA_BOOTSTRAP"):
        yield request.getfixturevalue("cluster").bootstrap
        return
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        from scripts.kafka_ready import metadata_brokers

        host, _, port = given.split(",")[0].rpartition(":")
        try:
            metadata_brokers(host, int(port), timeout=5)
        except OSError as exc:
            pytest.fail(f"KAFKA_BOOTSTRAP={given} does not answer a metadata request ({exc}); "
                        "unset it to let the tests start their own broker")
        yield given
        return
    broker = Broker(ROOT / ".data" / "kafka-test", int(TEST_PORT), KAFKA_SASL_PORT=TEST_SASL_PORT,
                    KAFKA_SASL_USERS=f"{SASL_USER}:{SASL_PASSWORD}")
    was_running = broker.run("status").returncode == 0
    up = broker.run("up")
    if up.returncode != 0:
        pytest.fail(f"could not start the test broker (scripts/kafka.sh up):\n{up.stderr}")
    try:
        yield broker.bootstrap
    finally:
        if not was_running:
            broker.run("down")


@pytest.fixture(scope="session")
def sasl_kafka(kafka: str, request: pytest.FixtureRequest) -> str:
    """The test broker's SASL_PLAINTEXT (PLAIN) listener, user SASL_USER / SASL_PASSWORD."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip("KAFKA_BOOTSTRAP points at an outside broker: no SASL listener of ours to test")
    if TEST_NODES == "3":
        return str(request.getfixturevalue("cluster").sasl_bootstrap)
    return f"127.0.0.1:{TEST_SASL_PORT}"


@pytest.fixture
def ns(kafka: str, tmp_path: Path) -> Namespace:
    """A unique app id + topic prefix on the test broker."""
    return Namespace(f"t{uuid.uuid4().hex[:10]}", kafka, tmp_path)


@pytest.fixture(scope="module")
def module_ns(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Namespace:
    return Namespace(f"m{uuid.uuid4().hex[:10]}", kafka, tmp_path_factory.mktemp("ns"))


@pytest.fixture(scope="session")
def captures() -> Path:
    if not (CAPTURES / "cryptofeed").is_dir():
        pytest.skip(f"real captures not found at {CAPTURES} (../shared/captures); skipping capture tests")
    return CAPTURES


@pytest.fixture(scope="module")
def sim_site(module_ns: Namespace) -> Iterator[SimSiteFactory]:
    """Factory of one simulator (20 updates/s per instrument) and one worker ingesting it, for a
    module: ``sim_site(feeds, data="data", **worker_env)`` starts both, waits until every
    instrument of ``feeds`` (``{venue: [symbol, …]}``) is synced (30 s) and returns the
    :class:`SimSite`. The worker's Coinbase feed counts as silent after 3 s (so that a
    ``silence`` fault shows quickly). Everything it started stops at the end of the module."""
    sims: list[Simulator] = []
    sites: list[SimSite] = []

    def start(feeds: dict[str, list[str]], data: str = "data", **env: str) -> SimSite:
        sim = Simulator(module_ns.tmp, rate=20).start()
        sims.append(sim)
        feeds_file = module_ns.tmp / f"feeds-{data}.json"
        feeds_file.write_text(json.dumps({"endpoints": {"coinbase": {"silence_s": 3.0}}}))
        worker = Worker(module_ns, module_ns.tmp / data, None, FEED="sim", SIM_URL=sim.url, FEEDS=feeds_spec(feeds),
                        FEEDS_FILE=str(feeds_file), **env)
        site = SimSite(module_ns, sim, worker, {f"{v}:{s}" for v, syms in feeds.items() for s in syms})
        sites.append(site)
        worker.start()
        wait_for(lambda: {k for k, b in site.books().items() if b["state"] == "synced"} >= site.keys, 30,
                 "every instrument synced within 30 s of start")
        return site

    try:
        yield start
    finally:
        for site in sites:
            site.worker.kill()
            site.sim.kill()  # a test may have replaced the simulator
        for sim in sims:
            sim.kill()


#: Screenshots of the browser tests (a CI artifact).
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's /usr/bin/chromium) for the module's page tests."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make browser` (run by `make test`) installs it")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module", params=["compiled", "python"])
def each_book_core(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's tests once with each book core (``app.book.use_core``): the compiled one must
    be built (``make install``), and both must pass the same tests. Module-scoped: a hypothesis
    test may use it. Use it with ``pytestmark = pytest.mark.usefixtures("each_book_core")``."""
    from app import book

    previous = book.core.NAME
    book.use_core(request.param)
    yield request.param
    book.use_core(previous)
