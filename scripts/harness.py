"""The process-level harness shared by the tests and the benchmarks (bench/run.py).

A broker (or a replicated cluster: :class:`Cluster`) run by scripts/kafka.sh, isolated
namespaces (app id, topic prefix, data dir, web port), real ``faust -A app worker`` and
``simulate`` processes, and reads of whole topics.
Nothing here asserts anything about bookstream: test-only helpers (references, truth
checks) live in tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = (ROOT.parent / "shared" / "captures").resolve()
FAUST = [sys.executable, "-m", "faust", "-A", "app"]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def percentile(sorted_xs: list[float], q: float, empty: float = 0.0) -> float:
    """The ``q`` quantile of an already sorted list, rounded to 2 places (``empty`` if none)."""
    return round(sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))], 2) if sorted_xs else empty


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``cond`` until it returns a truthy value; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception as exc:  # the condition may fail until the thing is up
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local test URL
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


class Broker:
    """A broker run by scripts/kafka.sh on its own port (free one if not given) and data dir."""

    def __init__(self, data_dir: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_DATA_DIR=str(data_dir), **env)
        if port is None:  # a free controller port too: the default (port + 1) may be taken
            self.env["KAFKA_CONTROLLER_PORT"] = str(free_port())

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts" / "kafka.sh"), cmd], env=self.env, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)

    def up(self) -> Broker:
        proc = self.run("up")
        assert proc.returncode == 0, proc.stderr
        return self

    def down(self) -> None:
        proc = self.run("down")
        assert proc.returncode == 0, proc.stderr


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none comes twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """A replicated KRaft cluster run by scripts/kafka.sh (``KAFKA_NODES``): ``nodes`` combined
    broker+controller nodes (node ids 1..nodes) on free ports, one ``node-<i>/`` folder each
    under ``data_dir``. ``sasl=True`` adds a SASL_PLAINTEXT listener per node (users from
    ``KAFKA_SASL_USERS`` in ``env``). For fault tests: :meth:`kill` (SIGKILL), :meth:`stop`
    (SIGTERM), :meth:`start` (back, and in the metadata) and :meth:`leader` (which node leads a
    topic partition)."""

    def __init__(self, data_dir: Path, nodes: int = 3, sasl: bool = False, **env: str) -> None:
        self.data_dir = data_dir
        self.nodes = nodes
        ports = free_ports(nodes * (3 if sasl else 2))
        self.ports = ports[:nodes]
        self.controller_ports = ports[nodes:2 * nodes]
        self.sasl_ports = ports[2 * nodes:]
        base = {k: v for k, v in os.environ.items()
                if k not in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_SASL_PORT", "KAFKA_SASL_PORTS",
                             "KAFKA_PORTS", "KAFKA_CONTROLLER_PORTS")}
        self.env = dict(base, KAFKA_NODES=str(nodes), KAFKA_DATA_DIR=str(data_dir),
                        KAFKA_PORTS=",".join(map(str, self.ports)),
                        KAFKA_CONTROLLER_PORTS=",".join(map(str, self.controller_ports)), **env)
        if sasl:
            self.env["KAFKA_SASL_PORTS"] = ",".join(map(str, self.sasl_ports))

    @property
    def bootstrap(self) -> str:
        """Every node's client address, ``127.0.0.1:p1,127.0.0.1:p2,…``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sasl_ports)

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[node - 1]}"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``scripts/kafka.sh <args>`` for this cluster (its output captured)."""
        return subprocess.run([str(ROOT / "scripts" / "kafka.sh"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def _check(self, *args: str) -> None:
        proc = self.run(*args)
        if proc.returncode != 0:
            raise AssertionError(f"scripts/kafka.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")

    def up(self) -> Cluster:
        """Start every node; return once each answers with all of them in its metadata."""
        self._check("up")
        return self

    def down(self) -> None:
        self._check("down")

    def kill(self, node: int) -> None:
        """SIGKILL node ``node`` (returns once the process is gone)."""
        self._check("kill", str(node))

    def stop(self, node: int) -> None:
        """SIGTERM node ``node``: a controlled shutdown (its leaderships move first)."""
        self._check("stop", str(node))

    def start(self, node: int) -> None:
        """Start node ``node`` again; return once it answers and the metadata lists every node."""
        self._check("start", str(node))

    def pid(self, node: int) -> int | None:
        """The running JVM of node ``node``, or None."""
        try:
            pid = int((self.data_dir / f"node-{node}" / "kafka.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def running(self) -> list[int]:
        """The nodes whose JVM runs."""
        return [n for n in range(1, self.nodes + 1) if self.pid(n) is not None]

    def java_pids(self) -> list[int]:
        """Every process whose command line names this cluster's data dir (none after down)."""
        out = []
        needle = str(self.data_dir).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if needle in (proc / "cmdline").read_bytes():
                        out.append(int(proc.name))
                except OSError:
                    continue
        return out

    def metadata(self, topics: list[str] | None = None) -> Any:
        """A Metadata answer (scripts.kafka_ready.Metadata) from the first running node that answers."""
        from scripts.kafka_ready import metadata

        errors = []
        for node in self.running() or range(1, self.nodes + 1):
            try:
                return metadata("127.0.0.1", self.ports[node - 1], [] if topics is None else topics, timeout=5)
            except OSError as exc:
                errors.append(f"node {node}: {exc}")
        raise OSError("no node answered a metadata request: " + "; ".join(errors))

    def leader(self, topic: str, partition: int = 0, timeout: float = 60, exclude: int | None = None) -> int:
        """The node leading ``topic``/``partition``: a running node, in the metadata of a running
        node (right after a kill the metadata still names the dead node until the controller
        fences it). ``exclude``: wait for a leader other than that node."""

        def live_leader() -> int | None:
            p = self.metadata([topic]).topics.get(topic, {}).get(partition)
            if p is None or p.leader < 0 or p.leader == exclude or self.pid(p.leader) is None:
                return None
            return int(p.leader)

        return int(wait_for(live_leader, timeout, f"a live leader of {topic}-{partition}"))

    def isr(self, topic: str, partition: int = 0) -> list[int]:
        """The in-sync replicas of ``topic``/``partition`` as the metadata says."""
        p = self.metadata([topic]).topics.get(topic, {}).get(partition)
        return [] if p is None else list(p.isr)


class Namespace:
    """A unique app id, topic prefix, data dir and web port: one isolated bookstream."""

    def __init__(self, name: str, bootstrap: str, tmp: Path, partitions: int = 4) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.partitions = partitions

    def topic(self, name: str) -> str:
        return f"{self.name}.{name}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "APP_ID": self.name,
            "TOPIC_PREFIX": f"{self.name}.",
            "TOPIC_PARTITIONS": str(self.partitions),
            "LOG_LEVEL": "info",
            "BROKER_SESSION_TIMEOUT": "6",
        })
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Any:
        """bookstream's settings in this namespace (for a sink producing into its raw topics);
        ``extra``: more environment, e.g. a :class:`Worker`'s own (``worker.extra_env``)."""
        from app.config import load

        saved = dict(os.environ)
        os.environ.update(self.env(**extra))
        try:
            return load()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def replay(self, *args: str, check: bool = True, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.faust("replay", *args, check=check, timeout=timeout, env=env)

    def faust(self, command: str, *args: str, check: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``faust -A app <command> <args>`` in this namespace (its output captured)."""
        proc = subprocess.run(
            [*FAUST, command, *args], env=self.env(**(env or {})), cwd=ROOT, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def faust_all(self, *calls: tuple[str, ...], timeout: float = 300,
                  env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
        """Several independent ``faust -A app`` commands at once (each a tuple of its arguments,
        not checked): for commands that change nothing, such as the ones a test expects refused."""
        procs = [subprocess.Popen([*FAUST, *call], env=self.env(**(env or {})), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for call in calls]
        out = []
        for call, proc in zip(calls, procs, strict=True):
            stdout, stderr = proc.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess([*FAUST, *call], proc.returncode, stdout, stderr))
        return out


class Worker:
    """A real ``faust -A app worker`` process with its own data dir and web port."""

    def __init__(self, ns: Namespace, data_dir: Path, web_port: int | None = None, **env: str) -> None:
        self.ns = ns
        self.data_dir = data_dir
        self.web_port = web_port or free_port()
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ns.tmp / f"worker-{self.web_port}.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, wait: bool = True, timeout: float = 90) -> Worker:
        self.starts += 1
        log = self.log_path.open("ab")
        env = self.ns.env(DATA_DIR=str(self.data_dir), WEB_PORT=str(self.web_port), **self.extra_env)
        self.proc = subprocess.Popen(
            [*FAUST, "worker", "-l", "info", "--web-port", str(self.web_port)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            return http_json(self.url + "/ready", timeout=2)[0] == 200

        try:
            wait_for(ready, timeout, "worker /ready")
        except (AssertionError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.tail()}") from None

    def get(self, path: str) -> tuple[int, Any]:
        return http_json(self.url + path)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` (a metadata refresh for a topic the client has not seen)."""
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for a new topic
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def _consume(bootstrap: str, topic: str, idle_s: float, stop: Callable[[list[Any]], bool] | None,
                   limit_s: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Without a stop condition: catch up with the end offsets seen now, then read on for at
        # most idle_s more (less if the topic falls silent) for records still in flight.
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + limit_s
        caught_up_at: float | None = None
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            if batch:
                for msgs in batch.values():
                    out.extend(msgs)
                last_new = now
                if stop is not None and stop(out):
                    break
            if stop is not None:
                continue
            if caught_up_at is None and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                caught_up_at = now
            if caught_up_at is not None and (now - caught_up_at >= idle_s or now - last_new >= idle_s):
                break
        return out
    finally:
        await consumer.stop()


#: The shared cryptofeed captures of the venues bookstream reads (under CAPTURES/cryptofeed).
CRYPTOFEED_FILES = ("BINANCE.ws.1.0", "BINANCE_FUTURES.ws.1.0", "BINANCE_DELIVERY.ws.1.0", "DERIBIT.ws.1.0",
                    "OKX.ws.1.0", "BYBIT.jsonl", "COINBASE.jsonl")


class MemorySink:
    """The worker's output sink, kept in memory: (topic, partition, key, value) in the order sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes, bytes]] = []

    def add(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self.sent.append((topic, partition, key, value))


def publish(records: Iterable[Any], partitions: int = 4, risk_depth_keys: Iterable[str] = (),
            settings: Any = None) -> list[tuple[str, int, bytes, bytes]]:
    """What a worker publishes for capture ``records`` (raw frames through app.router.Router,
    one Processor, and app.outputs.Publisher as app.runtime.BookRuntime hands it each outcome),
    in the order sent; one frame a raw record. At the end its timers fire once (book.depth due,
    options chains flushed)."""
    from app.config import Settings
    from app.outputs import Publisher
    from app.processor import Processor
    from app.records import source
    from app.router import Router
    from app.venues import VENUES
    from app.wire import Topics, partition_for

    sink = MemorySink()
    router, proc = Router(), Processor()
    publisher = Publisher(settings or Settings(), Topics("", VENUES, "unit"), sink,  # type: ignore[arg-type]
                          proc.instruments.get)
    publisher.risk_depth_keys = set(risk_depth_keys)
    offsets: collections.Counter[int] = collections.Counter()
    for rec in records:
        for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
            partition = partition_for(raw.key, partitions)
            out = proc.handle(raw)
            src = source(f"raw.{rec.venue}", partition, offsets[partition], 0)
            offsets[partition] += 1
            if out.dead is not None:
                publisher.dead(src.topic, partition, src.offset, raw, 0, raw.key, *out.dead, raw.data)
            # the registry first: a message can hold specs and tickers (dYdX's v4_markets list)
            if out.specs or out.states:
                publisher.instruments(out.specs, out.states, raw.ts, src)
            if out.trades or out.tickers or out.trade_gaps or out.feed_events:
                publisher.market(partition, out, raw.ts, src)
                publisher.publish_chains()  # the worker builds them after its batch of records (publish_deferred)
            if out.inst is not None and out.fx.changed():
                publisher.outcome(partition, out, out.inst, raw.ts)
    publisher.depth.flush(budget_s=60)
    publisher.chains.due(2**62)  # the timer's flush of every chain
    publisher.publish_chains()
    return sink.sent


#: Records per topic read by :func:`consume` that are checked against the published schema.
SCHEMA_SAMPLE = 200
_VALIDATORS: dict[str, Any] = {}


def published_schema(topic: str) -> tuple[str, Any] | None:
    """(schema name, a jsonschema validator of the committed ``schemas/<name>.json``) of a
    topic bookstream writes, named with any TOPIC_PREFIX; None for a topic it does not define."""
    from app.records import TOPICS, schema_file

    name = next((t for t in sorted(TOPICS, key=len, reverse=True) if "<" not in t and topic.endswith(t)), None)
    if name is None and ".raw." in f".{topic}" and not topic.endswith("raw.deadletter"):
        name = "raw.<venue>"
    if name is None:
        return None
    if name not in _VALIDATORS:
        import jsonschema  # an independent validator of the files as published

        schema = json.loads((ROOT / "schemas" / schema_file(name)).read_text())
        _VALIDATORS[name] = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return name, _VALIDATORS[name]


def check_schema(topic: str, records: list[Any], sample: int = SCHEMA_SAMPLE) -> int:
    """Validate up to ``sample`` records of ``topic`` (spread over all of them; every line of a
    raw record) against its published JSON Schema; AssertionError naming the first record that
    does not match. Returns how many values were checked."""
    found = published_schema(topic)
    if found is None or not records:
        return 0
    name, validator = found
    step = max(1, len(records) // sample)
    checked = 0
    for r in records[::step]:
        if r.value is None:  # a tombstone
            continue
        lines = [r.value]
        if name == "raw.<venue>":
            if dict(r.headers or ()).get("v") != b"2":
                continue  # a version-1 raw record: the frame itself, verbatim
            lines = [line for line in r.value.split(b"\n") if line]
        for line in lines:
            errors = sorted(validator.iter_errors(json.loads(line)), key=lambda e: list(e.path))
            assert not errors, (f"{topic} {r.partition}@{r.offset} does not match schemas/{name}: "
                                f"{errors[0].message} at {list(errors[0].path)}: {line[:300]!r}")
            checked += 1
    return checked


def consume(bootstrap: str, topic: str, idle_s: float = 2.0, stop: Callable[[list[Any]], bool] | None = None,
            timeout: float = 60) -> list[Any]:
    """Every record of ``topic`` from the beginning: until ``stop(records)`` or ``idle_s`` of silence.
    A sample of them is checked against the topic's published schema (:func:`check_schema`).

    Callable where an event loop already runs in this thread (Playwright's sync API keeps one
    for a module's browser): the consumer then runs on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        out = asyncio.run(_consume(bootstrap, topic, idle_s, stop, timeout))
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            out = pool.submit(asyncio.run, _consume(bootstrap, topic, idle_s, stop, timeout)).result()
    check_schema(topic, out)  # every topic a test reads matches its published schema
    return out


def values(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def frames(records: Iterable[Any]) -> list[Any]:
    """The frames of raw records (README "Raw record format"), in order."""
    from app.wire import RawFrame, decode_record

    return [f for r in records for f in decode_record(r.key, r.value, r.headers) if isinstance(f, RawFrame)]


async def produce_frames(settings: Any, items: Iterable[Any], per_s: float | None = None,
                         step_s: float = 0.0) -> int:
    """Frames (``app.wire.RawFrame``) into the raw topics through bookstream's own ingestion
    sink, batched into raw records as ingestion does: at ``per_s`` frames a second (sleeping
    only once ``step_s`` ahead, so that pacing costs no wake-up per frame), or as fast as
    possible. Returns how many were put."""
    from app.ingest.sink import RawSink

    sink = RawSink(settings, 64 * 2**20, role="harness")
    sink.start()
    n = 0
    began = time.monotonic()
    try:
        for frame in items:
            if per_s is not None and (ahead := n / per_s - (time.monotonic() - began)) > step_s:
                await asyncio.sleep(ahead)
            await sink.put_wait(frame)
            n += 1
        await sink.flush()
    finally:
        await sink.stop()
    return n


class Simulator:
    """A real `faust -A app simulate` process on its own port."""

    def __init__(self, tmp: Path, port: int | None = None, rate: float = 20.0) -> None:
        self.port = port or free_port()
        self.rate = rate
        self.log_path = tmp / f"simulator-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Simulator:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([*FAUST, "simulate", "--port", str(self.port), "--rate", str(self.rate)],
                                     env=env, cwd=ROOT, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: http_json(self.url + "/control/status")[0] == 200, 30, "simulator up")
        return self

    def truth(self, venue: str, symbol: str) -> list[list[Any]]:
        status, body = http_json(f"{self.url}/control/truth/{venue}/{symbol}", timeout=10)
        assert status == 200, body
        return body["entries"]

    def fault(self, venue: str, symbol: str, fault: str, seconds: float = 5.0) -> None:
        req = urllib.request.Request(f"{self.url}/control/fault", method="POST",  # noqa: S310 - local URL
                                     data=json.dumps({"venue": venue, "symbol": symbol, "fault": fault,
                                                      "seconds": seconds}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - local test URL
            assert resp.status == 200

    def list_instruments(self, venue: str, symbols: list[str], rate: float | None = None) -> None:
        """List ``symbols`` on ``venue`` now (before anyone subscribes), each stepping at ``rate``."""
        body: dict[str, Any] = {"venue": venue, "symbols": symbols, **({"rate": rate} if rate is not None else {})}
        req = urllib.request.Request(f"{self.url}/control/instruments", method="POST",  # noqa: S310 - local URL
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - local test URL
            assert resp.status == 200

    def move(self, coin: str, pct: float, seconds: float) -> None:
        """Move ``coin`` (its options' forward and its other books) by ``pct`` percent over ``seconds``."""
        req = urllib.request.Request(f"{self.url}/control/move", method="POST",  # noqa: S310 - local URL
                                     data=json.dumps({"coin": coin, "pct": pct, "seconds": seconds}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - local test URL
            assert resp.status == 200

    def forward(self, coin: str) -> float:
        """The simulator's current forward of ``coin``'s options."""
        status, body = http_json(self.url + "/control/status")
        assert status == 200, body
        return float(body["forwards"][coin])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
