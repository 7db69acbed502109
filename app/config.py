"""Settings, read once from environment variables with documented defaults.

Every setting is listed in README.md ("Configuration"). A malformed value is a
:class:`~app.errors.ConfigError` at start-up naming the variable, never a crash later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from app import book_core
from app.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

N = TypeVar("N", int, float)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: Every environment variable bookstream reads (README "Configuration" documents each).
ENV_VARS = (
    "KAFKA_BOOTSTRAP", "APP_ID", "TOPIC_PREFIX", "TOPIC_PARTITIONS", "TOPIC_REPLICATION",
    "WEB_HOST", "WEB_PORT", "WEB_CONTROL_TOKEN", "WEB_ALLOWED_HOSTS",
    "DATA_DIR", "LOG_LEVEL", "DEPTH_INTERVAL_MS", "DEPTH_LEVELS", "BOOK_CHECKPOINT_INTERVAL_S",
    "BUFFER_MAX_FRAMES", "TABLE_STANDBY_REPLICAS", "STREAM_BUFFER_MAXSIZE", "PRODUCER_LINGER_MS",
    "COMMIT_INTERVAL_S", "BROKER_SESSION_TIMEOUT", "INGEST_BUFFER_MB", "INGEST_IN_WORKER", "INGEST_WS_COMPRESSION",
    "RESYNC_RETRY_S", "INGEST_STATUS_S", "PRODUCER_COMPRESSION", "STATE_COMMIT_INTERVAL_MS",
    "STATE_COMMIT_CATCHUP_MS",
    "CHANGELOG_SEGMENT_BYTES", "CHANGELOG_SEGMENT_MS", "CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO",
    "CHANGELOG_DELETE_RETENTION_MS", "RAW_BATCH_MAX_FRAMES", "RAW_BATCH_MAX_BYTES", "RAW_BATCH_LINGER_MS",
    "TOP_CONFLATE_MS", "STATIC_MEMBERSHIP", "OUTPUT_BUFFER_MB", "EVENT_LOOP", "CONSUMER_FETCH_MAX_WAIT_MS",
    "CONSUMER_FETCH_MIN_BYTES", "CHAIN_INTERVAL_MS", "INSTRUMENTS_REFRESH_S", "REPORTS_DIR", "REPORT_DAILY_AT",
    "RISK_ENABLED", "RISK_RULES_FILE", "MARGIN_PARAMS_FILE",
    "RISK_INTERVAL_MS", "SCENARIO_INTERVAL_MS", "SCENARIO_VOL_SHIFT",
    "RISK_MAX_INPUT_AGE_MS", "RISK_LATENESS_MS", "RISK_IDLE_MS", "RISK_LOOKBACK_S",
    "ALERT_STALE_S", "ALERT_SPREAD_BPS", "ALERT_FUNDING_JUMP", "ALERT_DIVERGENCE_BPS",
    "WEB_FAUST_VIEWS", "BROKER_MAX_POLL_RECORDS", "CONSUMER_MAX_FETCH_SIZE", "PRODUCER_MAX_BATCH_SIZE",
    "FEEDS", "FEEDS_FILE", "FEED", "SIM_URL", "CREDENTIALS_FILE",
    "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE",
    "MIN_INSYNC_REPLICAS", "RAW_RETENTION_MS", "RAW_RETENTION_BYTES", "OUTPUT_RETENTION_MS", "PROCESSING_GUARANTEE",
    "BOOK_CORE", "GC_GEN0_THRESHOLD",
)

#: PROCESSING_GUARANTEE values (Kafka Streams' names).
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")

#: OUTPUT_RETENTION_MS default: 7 days, Kafka's own default. A consumer of the derived topics
#: that is down over a long weekend still finds everything it missed, and any of them can be
#: rebuilt from the raw topics, which keep everything by default.
OUTPUT_RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Secret:
    """A credential value; every textual form of it is masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to the broker (KAFKA_SECURITY_PROTOCOL and friends)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


def _security() -> KafkaSecurity:
    protocol = _env_str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}")
    mechanism = _env_str("KAFKA_SASL_MECHANISM", "PLAIN").upper()
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"KAFKA_SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}")
    sec = KafkaSecurity(
        protocol=protocol, sasl_mechanism=mechanism, sasl_username=_env_str("KAFKA_SASL_USERNAME", ""),
        sasl_password=Secret(os.environ.get("KAFKA_SASL_PASSWORD", "")),
        ssl_cafile=_env_str("KAFKA_SSL_CAFILE", ""), ssl_certfile=_env_str("KAFKA_SSL_CERTFILE", ""),
        ssl_keyfile=_env_str("KAFKA_SSL_KEYFILE", ""),
    )
    if sec.sasl and not (sec.sasl_username and sec.sasl_password):
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
    for name, path in (("KAFKA_SSL_CAFILE", sec.ssl_cafile), ("KAFKA_SSL_CERTFILE", sec.ssl_certfile),
                       ("KAFKA_SSL_KEYFILE", sec.ssl_keyfile)):
        if path and not sec.tls:
            raise ConfigError(f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                              "(use SSL or SASL_SSL)")
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}={path}: no such file")
    if bool(sec.ssl_certfile) != bool(sec.ssl_keyfile):
        raise ConfigError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (client certificate and its key)")
    return sec


def _env_clock(name: str, default: str) -> tuple[int, int] | None:
    """A UTC time of day, HH:MM; ``off``: None."""
    text = _env_str(name, default)
    if text.lower() == "off":
        return None
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ConfigError(f"{name}={text!r} is not a UTC time of day HH:MM (or off)")
    return int(hours), int(minutes)


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_number(name: str, default: N, parse: Callable[[str], N], what: str, minimum: N,
                maximum: N | None) -> N:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name}={value} must be at least {minimum}{upper}")
    return value


def _env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    return _env_number(name, default, int, "a whole number", minimum, maximum)


def _env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(name, default, float, "a number", minimum, None)


def _loop_stall_trace_ms() -> float:
    value = _env_float("LOOP_STALL_TRACE_MS", 0.0)
    if 0 < value < 5:
        raise ConfigError(f"LOOP_STALL_TRACE_MS={value:g} is below 5: the tracer would take the GIL every "
                          "millisecond or two and cause the stalls it looks for; 0 turns it off")
    return value


def _env_ratio(name: str, default: float) -> float:
    value = _env_float(name, default, minimum=0.0)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name}={value} must be between 0 and 1")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not true or false")


def _env_auto_int(name: str, *, minimum: int = 1) -> int | None:
    """An integer (at least ``minimum``), or None for ``auto`` (and unset)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not auto or a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be auto or at least {minimum}")
    return value


def _env_retention(name: str, default: int) -> int:
    """Kafka's retention.ms / retention.bytes: -1 (no limit) or a positive number."""
    value = _env_int(name, default, minimum=-1)
    if value == 0:
        raise ConfigError(f"{name}=0 would delete everything: use -1 (no limit) or a positive number")
    return value


def _processing_guarantee(raw: str) -> str:
    value = raw.strip().lower()
    if value not in PROCESSING_GUARANTEES:
        raise ConfigError(f"PROCESSING_GUARANTEE={raw!r} must be {' or '.join(PROCESSING_GUARANTEES)}")
    return value


def resolve_replication(replication: int | None, min_insync: int | None, brokers: int) -> tuple[int, int]:
    """The replication factor and ``min.insync.replicas`` of the topics bookstream creates on a
    cluster of ``brokers`` brokers: ``TOPIC_REPLICATION`` (None: auto = min(3, brokers)) and
    ``MIN_INSYNC_REPLICAS`` (None: auto = 2 with a factor of 3 or more, else 1). A factor the
    cluster cannot hold, or a minimum above the factor, is a ConfigError."""
    if replication is None:
        factor = max(1, min(3, brokers))
    elif replication > brokers:
        raise ConfigError(f"TOPIC_REPLICATION={replication} but the cluster has {brokers} broker(s): "
                          f"use at most {brokers}, or auto")
    else:
        factor = replication
    if min_insync is None:
        return factor, 2 if factor >= 3 else 1
    if min_insync > factor:
        said = "auto" if replication is None else str(replication)
        raise ConfigError(f"MIN_INSYNC_REPLICAS={min_insync} is more than the replication factor {factor} "
                          f"(TOPIC_REPLICATION={said}, {brokers} broker(s)): writes with acks=all would fail")
    return factor, min_insync


def _bootstrap(raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    if not servers:
        raise ConfigError("KAFKA_BOOTSTRAP is empty; expected host:port[,host:port…]")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"KAFKA_BOOTSTRAP entry {server!r} is not host:port")
    return ",".join(servers)


def _event_loop(name: str) -> str:
    if name not in ("uvloop", "asyncio"):
        raise ConfigError(f"EVENT_LOOP={name!r} must be uvloop or asyncio")
    return name


def _compression(var: str, name: str, codecs: tuple[str, ...]) -> str | None:
    """``name`` (one of "none" and ``codecs``) of the compression setting ``var``; None for "none"."""
    choices = ("none", *codecs)
    if name not in choices:
        raise ConfigError(f"{var}={name!r} must be {', '.join(choices[:-1])} or {choices[-1]}")
    return None if name == "none" else name


@dataclass(frozen=True)
class ChangelogSettings:
    """Topic configuration of the books table's changelog (compaction that actually runs)."""

    segment_bytes: int = 8 * 1024 * 1024  # CHANGELOG_SEGMENT_BYTES: the active segment is never compacted
    segment_ms: int = 60 * 1000  # CHANGELOG_SEGMENT_MS: roll (and so compact) at least this often
    min_cleanable_dirty_ratio: float = 0.1  # CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO
    delete_retention_ms: int = 24 * 3600 * 1000  # CHANGELOG_DELETE_RETENTION_MS: how long deletes stay

    def topic_configs(self) -> dict[str, str]:
        return {"cleanup.policy": "compact", "segment.bytes": str(self.segment_bytes),
                "segment.ms": str(self.segment_ms), "min.cleanable.dirty.ratio": str(self.min_cleanable_dirty_ratio),
                "delete.retention.ms": str(self.delete_retention_ms), "max.message.bytes": str(RAW_MAX_MESSAGE_BYTES)}


#: max.message.bytes of the topics bookstream creates: a full-depth snapshot (Coinbase BTC-USD,
#: ~46,000 levels) is one frame of a few MB before compression.
RAW_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class RiskSettings:
    """The risk engine's settings (README "Risk")."""

    enabled: bool = True
    rules_file: Path | None = None
    interval_ms: int = 250
    scenario_interval_ms: int = 1000
    vol_shift: float = 0.10  # vol points (decimal) of the scenario grid's down/up columns
    max_input_age_ms: int = 30_000
    lateness_ms: int = 500
    idle_ms: int = 2000
    lookback_s: float = 3600.0
    alert_stale_s: float = 10.0
    alert_spread_bps: float = 50.0
    alert_funding_jump: float = 0.0005
    alert_divergence_bps: float = 50.0
    margin_params_file: Path | None = None  # MARGIN_PARAMS_FILE; None: app/risk/margin_params.json
    deribit_margin: str = "standard"  # RISK_DERIBIT_MARGIN: standard | portfolio (the account's margin model)
    alert_margin_ratios: tuple[float, ...] = (0.5, 0.8)  # ALERT_MARGIN_RATIOS: MM/equity thresholds
    signal_ttl_s: float = 60.0  # HEDGE_SIGNAL_TTL_S: a signal not answered by then is no longer in flight


def _risk() -> RiskSettings:
    rules = _env_str("RISK_RULES_FILE", "")
    params = _env_str("MARGIN_PARAMS_FILE", "")
    params_path = Path(params).expanduser().resolve() if params else None
    if params_path is not None and not params_path.is_file():
        raise ConfigError(f"MARGIN_PARAMS_FILE={params}: no such file")
    interval = _env_int("RISK_INTERVAL_MS", 250, minimum=10, maximum=3_600_000)
    deribit = _env_str("RISK_DERIBIT_MARGIN", "standard")
    if deribit not in ("standard", "portfolio"):
        raise ConfigError(f"RISK_DERIBIT_MARGIN={deribit}: standard or portfolio")
    ratios_text = _env_str("ALERT_MARGIN_RATIOS", "0.5,0.8")
    try:
        ratios = tuple(sorted(float(x) for x in ratios_text.split(",") if x.strip()))
    except ValueError:
        raise ConfigError(f"ALERT_MARGIN_RATIOS={ratios_text}: comma-separated ratios (e.g. 0.5,0.8)") from None
    if any(not 0 < r < 1e6 for r in ratios):
        raise ConfigError(f"ALERT_MARGIN_RATIOS={ratios_text}: each ratio must be > 0")
    return RiskSettings(
        enabled=_env_bool("RISK_ENABLED", True),
        rules_file=Path(rules).expanduser().resolve() if rules else None,
        interval_ms=interval,
        scenario_interval_ms=_env_int("SCENARIO_INTERVAL_MS", 1000, minimum=interval, maximum=3_600_000),
        vol_shift=_env_float("SCENARIO_VOL_SHIFT", 0.10, minimum=0.0),
        max_input_age_ms=_env_int("RISK_MAX_INPUT_AGE_MS", 30_000, minimum=1),
        lateness_ms=_env_int("RISK_LATENESS_MS", 500, minimum=0),
        idle_ms=_env_int("RISK_IDLE_MS", 2000, minimum=10),
        lookback_s=_env_float("RISK_LOOKBACK_S", 3600.0, minimum=0.0),
        alert_stale_s=_env_float("ALERT_STALE_S", 10.0, minimum=0.0),
        alert_spread_bps=_env_float("ALERT_SPREAD_BPS", 50.0, minimum=0.0),
        alert_funding_jump=_env_float("ALERT_FUNDING_JUMP", 0.0005, minimum=0.0),
        alert_divergence_bps=_env_float("ALERT_DIVERGENCE_BPS", 50.0, minimum=0.0),
        margin_params_file=params_path,
        deribit_margin=deribit,
        alert_margin_ratios=ratios,
        signal_ttl_s=_env_float("HEDGE_SIGNAL_TTL_S", 60.0, minimum=0.0),
    )


@dataclass(frozen=True)
class Settings:
    """All runtime settings. Construct with :func:`load`."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "bookstream"
    topic_prefix: str = ""
    partitions: int = 4
    replication: int | None = None  # TOPIC_REPLICATION; None: auto, resolved by app.kafka.ensure_topics
    min_insync_replicas: int | None = None  # MIN_INSYNC_REPLICAS; None: auto (resolve_replication)
    raw_retention_ms: int = -1  # RAW_RETENTION_MS: -1 keeps raw records forever
    raw_retention_bytes: int = -1  # RAW_RETENTION_BYTES: per partition; -1: no limit
    output_retention_ms: int = OUTPUT_RETENTION_MS_DEFAULT  # OUTPUT_RETENTION_MS: derived, non-compacted topics
    processing_guarantee: str = "at_least_once"  # PROCESSING_GUARANTEE
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: WEB_CONTROL_TOKEN: the bearer token every control endpoint (what changes what the automation
    #: does) requires; None: none required, allowed only while WEB_HOST is a loopback address
    web_control_token: str | None = field(default=None, repr=False)
    #: WEB_ALLOWED_HOSTS: host names a control request may name in Host/Origin besides the loopback
    #: names and WEB_HOST (DNS rebinding: a foreign name resolving to this address is refused)
    web_allowed_hosts: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=lambda: ROOT / ".data" / "worker")
    log_level: str = "info"
    depth_interval_ms: int = 1000
    depth_levels: int = 20
    book_checkpoint_interval_s: int = 300  # BOOK_CHECKPOINT_INTERVAL_S: book.checkpoints per book; 0: none
    reports_dir: Path = field(default_factory=lambda: ROOT / ".data" / "reports")  # REPORTS_DIR
    report_daily_at: tuple[int, int] | None = None  # REPORT_DAILY_AT: UTC HH:MM; None ("off", the default): none
    buffer_max_frames: int = 20_000
    standby_replicas: int = 0
    stream_buffer_maxsize: int = 128
    producer_linger_ms: int = 1
    loop_stall_trace_ms: float = 0.0  # LOOP_STALL_TRACE_MS: log what held the worker's loop this long; 0: off
    gc_gen0_threshold: int = 20_000  # GC_GEN0_THRESHOLD: the worker's young collections (Python's default: 700)
    commit_interval_s: float = 2.8
    session_timeout_s: float = 10.0
    ingest_buffer_mb: float = 64.0
    state_commit_interval_ms: int = 100
    #: STATE_COMMIT_CATCHUP_MS: at_least_once, a partition whose newest applied frame was received
    #: over a second ago (a backlog, a replay: app.state.manager.CATCHUP_LAG_NS) commits this far apart
    state_commit_catchup_ms: int = 500
    changelog: ChangelogSettings = field(default_factory=ChangelogSettings)
    raw_batch_max_frames: int = 1000
    raw_batch_max_bytes: int = 1024 * 1024
    raw_batch_linger_ms: float = 1.0
    top_conflate_ms: int = 0
    chain_interval_ms: int = 1000
    instruments_refresh_s: float = 3600.0
    static_membership: bool = True
    output_buffer_mb: float = 64.0
    event_loop: str = "uvloop"
    book_core: str = "auto"  # BOOK_CORE: auto (the compiled core when built), compiled, python
    resync_retry_s: float = 5.0
    ingest_status_s: float = 10.0
    #: INGEST_WS_COMPRESSION: "deflate" offers the venues permessage-deflate (RFC 7692); None: not offered
    ingest_ws_compression: str | None = None
    compression: str | None = "zstd"
    compression_min_bytes: int = 1024
    faust_views: bool = False
    ingest_in_worker: bool = True
    max_poll_records: int | None = None  # None: no limit
    max_fetch_size: int = 1024 * 1024
    fetch_max_wait_ms: int = 10
    fetch_min_bytes: int = 1
    producer_max_batch_size: int = 1024 * 1024
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    risk: RiskSettings = field(default_factory=RiskSettings)

    @property
    def broker_url(self) -> str:
        """Faust broker URL: ``kafka://h1:p1;h2:p2``."""
        return ";".join(f"kafka://{s}" for s in self.kafka_bootstrap.split(","))

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix (tests use a unique prefix)."""
        return f"{self.topic_prefix}{name}"


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or name to bind) reachable only from this machine?"""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def load() -> Settings:
    """Read the settings from the environment, raising ConfigError on bad values."""
    level = _env_str("LOG_LEVEL", "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} must be one of {', '.join(LOG_LEVELS)}")
    # `faust --datadir X` exports F_DATADIR before the app is imported; it wins.
    data_dir = os.environ.get("F_DATADIR") or _env_str("DATA_DIR", str(ROOT / ".data" / "worker"))
    app_id = _env_str("APP_ID", "bookstream")
    if not all(c.isalnum() or c in "-_." for c in app_id):
        raise ConfigError(f"APP_ID={app_id!r} may only hold letters, digits, '-', '_' and '.'")
    prefix = os.environ.get("TOPIC_PREFIX", "").strip()
    if prefix and not all(c.isalnum() or c in "-_." for c in prefix):
        raise ConfigError(f"TOPIC_PREFIX={prefix!r} may only hold letters, digits, '-', '_', '.'")
    replication = _env_auto_int("TOPIC_REPLICATION", minimum=1)
    min_insync = _env_auto_int("MIN_INSYNC_REPLICAS", minimum=1)
    if replication is not None and min_insync is not None and min_insync > replication:
        raise ConfigError(f"MIN_INSYNC_REPLICAS={min_insync} is more than TOPIC_REPLICATION={replication}: "
                          "writes with acks=all would fail")
    web_host = _env_str("WEB_HOST", "127.0.0.1")
    token = os.environ.get("WEB_CONTROL_TOKEN", "").strip() or None
    if token is None and not is_loopback(web_host):
        raise ConfigError(f"WEB_HOST={web_host} is reachable from other machines: set WEB_CONTROL_TOKEN (a secret the "
                          "control endpoints then require as 'Authorization: Bearer <token>')")
    if token is not None and len(token) < 16:
        raise ConfigError("WEB_CONTROL_TOKEN is shorter than 16 characters: use a long random secret "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    allowed = tuple(h.strip().lower() for h in _env_str("WEB_ALLOWED_HOSTS", "").split(",") if h.strip())
    return Settings(
        kafka_bootstrap=_bootstrap(_env_str("KAFKA_BOOTSTRAP", "127.0.0.1:9092")),
        app_id=app_id,
        topic_prefix=prefix,
        partitions=_env_int("TOPIC_PARTITIONS", 4, minimum=1, maximum=1024),
        replication=replication,
        min_insync_replicas=min_insync,
        raw_retention_ms=_env_retention("RAW_RETENTION_MS", -1),
        raw_retention_bytes=_env_retention("RAW_RETENTION_BYTES", -1),
        output_retention_ms=_env_retention("OUTPUT_RETENTION_MS", OUTPUT_RETENTION_MS_DEFAULT),
        processing_guarantee=_processing_guarantee(_env_str("PROCESSING_GUARANTEE", "at_least_once")),
        web_host=web_host,
        web_control_token=token,
        web_allowed_hosts=allowed,
        web_port=_env_int("WEB_PORT", 6066, minimum=1, maximum=65535),
        data_dir=Path(data_dir).expanduser().resolve(),
        log_level=level,
        depth_interval_ms=_env_int("DEPTH_INTERVAL_MS", 1000, minimum=1),
        depth_levels=_env_int("DEPTH_LEVELS", 20, minimum=1, maximum=5000),
        book_checkpoint_interval_s=_env_int("BOOK_CHECKPOINT_INTERVAL_S", 300, minimum=0),
        reports_dir=Path(_env_str("REPORTS_DIR", str(ROOT / ".data" / "reports"))).expanduser().resolve(),
        report_daily_at=_env_clock("REPORT_DAILY_AT", "off"),
        buffer_max_frames=_env_int("BUFFER_MAX_FRAMES", 20_000, minimum=1),
        standby_replicas=_env_int("TABLE_STANDBY_REPLICAS", 0, minimum=0),
        stream_buffer_maxsize=_env_int("STREAM_BUFFER_MAXSIZE", 128, minimum=1),
        producer_linger_ms=_env_int("PRODUCER_LINGER_MS", 1, minimum=0),
        loop_stall_trace_ms=_loop_stall_trace_ms(),
        gc_gen0_threshold=_env_int("GC_GEN0_THRESHOLD", 20_000, minimum=100, maximum=10_000_000),
        commit_interval_s=_env_float("COMMIT_INTERVAL_S", 2.8, minimum=0.1),
        session_timeout_s=_env_float("BROKER_SESSION_TIMEOUT", 10.0, minimum=3.0),
        ingest_buffer_mb=_env_float("INGEST_BUFFER_MB", 64.0, minimum=0.001),
        state_commit_interval_ms=_env_int("STATE_COMMIT_INTERVAL_MS", 100, minimum=1, maximum=60_000),
        state_commit_catchup_ms=_env_int("STATE_COMMIT_CATCHUP_MS", 500, minimum=1, maximum=60_000),
        changelog=ChangelogSettings(
            segment_bytes=_env_int("CHANGELOG_SEGMENT_BYTES", 8 * 1024 * 1024, minimum=1024 * 1024),
            segment_ms=_env_int("CHANGELOG_SEGMENT_MS", 60 * 1000, minimum=1000),
            min_cleanable_dirty_ratio=_env_ratio("CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO", 0.1),
            delete_retention_ms=_env_int("CHANGELOG_DELETE_RETENTION_MS", 24 * 3600 * 1000, minimum=60_000),
        ),
        raw_batch_max_frames=_env_int("RAW_BATCH_MAX_FRAMES", 1000, minimum=1, maximum=100_000),
        raw_batch_max_bytes=_env_int("RAW_BATCH_MAX_BYTES", 1024 * 1024, minimum=1024,
                                     maximum=RAW_MAX_MESSAGE_BYTES // 2),
        raw_batch_linger_ms=_env_float("RAW_BATCH_LINGER_MS", 1.0, minimum=0.0),
        top_conflate_ms=_env_int("TOP_CONFLATE_MS", 0, minimum=0, maximum=60_000),
        chain_interval_ms=_env_int("CHAIN_INTERVAL_MS", 1000, minimum=10, maximum=3_600_000),
        instruments_refresh_s=_env_float("INSTRUMENTS_REFRESH_S", 3600.0, minimum=0.0),
        static_membership=_env_bool("STATIC_MEMBERSHIP", True),
        output_buffer_mb=_env_float("OUTPUT_BUFFER_MB", 64.0, minimum=1.0),
        event_loop=_event_loop(_env_str("EVENT_LOOP", "uvloop").lower()),
        book_core=book_core.checked_core(_env_str("BOOK_CORE", "auto").lower()),
        resync_retry_s=_env_float("RESYNC_RETRY_S", 5.0, minimum=0.5),
        ingest_status_s=_env_float("INGEST_STATUS_S", 10.0, minimum=0.1),
        ingest_ws_compression=_compression("INGEST_WS_COMPRESSION", _env_str("INGEST_WS_COMPRESSION", "none").lower(),
                                           ("deflate",)),
        compression=_compression("PRODUCER_COMPRESSION", _env_str("PRODUCER_COMPRESSION", "zstd").lower(),
                                 ("gzip", "snappy", "lz4", "zstd")),
        compression_min_bytes=_env_int("PRODUCER_COMPRESSION_MIN_BYTES", 1024, minimum=0),
        faust_views=_env_bool("WEB_FAUST_VIEWS", False),
        ingest_in_worker=_env_bool("INGEST_IN_WORKER", True),
        max_poll_records=_env_int("BROKER_MAX_POLL_RECORDS", 0, minimum=0) or None,
        max_fetch_size=_env_int("CONSUMER_MAX_FETCH_SIZE", 1024 * 1024, minimum=1024),
        fetch_max_wait_ms=_env_int("CONSUMER_FETCH_MAX_WAIT_MS", 10, minimum=1, maximum=5000),
        fetch_min_bytes=_env_int("CONSUMER_FETCH_MIN_BYTES", 1, minimum=1, maximum=64 * 1024 * 1024),
        producer_max_batch_size=_env_int("PRODUCER_MAX_BATCH_SIZE", 1024 * 1024, minimum=1024,
                                         maximum=RAW_MAX_MESSAGE_BYTES),
        security=_security(),
        risk=_risk(),
    )
