#!/usr/bin/env bash
# Local Apache Kafka (KRaft combined mode, one node, no Docker) for development and tests.
#
#   scripts/kafka.sh up       resolve jars (once), format storage (once), start, wait until ready
#   scripts/kafka.sh down     stop the broker started from this data dir (SIGTERM, then SIGKILL)
#   scripts/kafka.sh status   say whether it runs and answers metadata requests (exit 0 if ready)
#   scripts/kafka.sh logs     tail the broker log
#   scripts/kafka.sh libs     only resolve the jars from Maven Central
#
# Settings (environment):
#   KAFKA_PORT             client listener port                  (9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port        (KAFKA_PORT + 1)
#   KAFKA_DATA_DIR         log dirs, pid file, broker logs       (<repo>/.data/kafka)
#   KAFKA_LIBS_DIR         resolved jars                         (<repo>/.cache/kafka/libs)
#   KAFKA_READY_TIMEOUT    seconds to wait for readiness         (90)
#   KAFKA_HEAP_OPTS        JVM heap flags                        (-Xmx1G -Xms1G)
#   KAFKA_SASL_PORT        also listen with SASL_PLAINTEXT (PLAIN) on this port   (off)
#   KAFKA_SASL_USERS       its users, "user:password[,user:password…]"           (bookstream:bookstream)
# A second broker beside the first needs only another KAFKA_PORT and KAFKA_DATA_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$ROOT/.data/kafka}
KAFKA_LIBS_DIR=${KAFKA_LIBS_DIR:-$ROOT/.cache/kafka/libs}
KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-}
KAFKA_SASL_USERS=${KAFKA_SASL_USERS:-bookstream:bookstream}
POM=$ROOT/kafka/pom.xml
PYTHON=${PYTHON:-python3}

PID_FILE=$KAFKA_DATA_DIR/kafka.pid
PROPS=$KAFKA_DATA_DIR/server.properties
LOG_DIR=$KAFKA_DATA_DIR/logs
STAMP=$KAFKA_LIBS_DIR/.resolved

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"; }

need_tools() {
  command -v java >/dev/null 2>&1 || die "java not found on PATH. Install a JDK 17 (Debian: apt-get install openjdk-17-jre-headless)."
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH (used for the readiness check)."
}

resolve_libs() {
  local version; version=$(kafka_version)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$version" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH. Install Maven (Debian: apt-get install maven); it resolves the Kafka $version jars."
  say "resolving Apache Kafka $version and its runtime dependencies from Maven Central into $KAFKA_LIBS_DIR"
  rm -rf "$KAFKA_LIBS_DIR"; mkdir -p "$KAFKA_LIBS_DIR"
  local mvn_log=$KAFKA_LIBS_DIR/../maven.log
  if ! mvn -B -ntp -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIBS_DIR" >"$mvn_log" 2>&1; then
    tail -n 30 "$mvn_log" >&2 || true
    die "could not resolve org.apache.kafka:kafka_2.13:$version from Maven Central (log: $mvn_log). Check network access to the registry or ~/.m2/settings.xml mirrors."
  fi
  ls "$KAFKA_LIBS_DIR"/kafka_2.13-"$version".jar >/dev/null 2>&1 || die "Maven finished but kafka_2.13-$version.jar is missing from $KAFKA_LIBS_DIR"
  echo "$version" >"$STAMP"
}

# Is PID a broker started from this data dir?
is_our_broker() {
  local pid=$1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $PROPS"
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid=$(cat "$PID_FILE" 2>/dev/null || true)
  if [ -n "$pid" ] && is_our_broker "$pid"; then echo "$pid"; return 0; fi
  say "removing stale pid file $PID_FILE (pid ${pid:-?} is not a broker of this data dir)"
  rm -f "$PID_FILE"
  return 1
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\))).*/\1/p' | head -n1; }

ready() { "$PYTHON" "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$KAFKA_PORT"; }

write_props() {
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" sasl=""
  if [ -n "$KAFKA_SASL_PORT" ]; then
    # A second client listener that authenticates (SASL/PLAIN) for users whose brokers need it.
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
    local users="" pair
    IFS=',' read -ra pairs <<<"$KAFKA_SASL_USERS"
    for pair in "${pairs[@]}"; do
      [[ $pair == *:* ]] || die "KAFKA_SASL_USERS entry '${pair%%:*}' is not user:password"
      users="$users user_${pair%%:*}=\"${pair#*:}\""
    done
    sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$users;"
  fi
  cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$sasl
log.dirs=$KAFKA_DATA_DIR/kraft-logs
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
log.segment.bytes=268435456
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
  chmod 600 "$PROPS"  # may hold SASL passwords
}

cmd_up() {
  need_tools
  resolve_libs
  mkdir -p "$KAFKA_DATA_DIR" "$LOG_DIR" 2>/dev/null || die "cannot create $KAFKA_DATA_DIR; set KAFKA_DATA_DIR to a writable folder."
  [ -w "$KAFKA_DATA_DIR" ] || die "$KAFKA_DATA_DIR is not writable; set KAFKA_DATA_DIR to a writable folder."
  local pid
  if pid=$(running_pid); then
    if ready; then say "already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"; return 0; fi
    say "running (pid $pid) but not ready yet; waiting"
    wait_ready "$pid"; return 0
  fi
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_PORT; do
    if port_in_use "$p"; then
      die "port $p is already in use by $(port_owner "$p" || echo 'another process'), not by a broker of $KAFKA_DATA_DIR. Stop it, or pick other ports with KAFKA_PORT=... (and KAFKA_DATA_DIR=... for a second broker)."
    fi
  done
  write_props
  local cp="$KAFKA_LIBS_DIR/*"
  local jvm_log=(-Dlog4j.configuration="file:$ROOT/kafka/log4j.properties" -Dkafka.logs.dir="$LOG_DIR")
  if [ ! -f "$KAFKA_DATA_DIR/kraft-logs/meta.properties" ]; then
    local cluster_id
    # A random Kafka Uuid (base64url). Never one starting with '-' (1 in 64): the storage tool
    # would read it as an option ("argument --cluster-id/-t: expected one argument"); Kafka's own
    # Uuid.randomUuid() draws again for the same reason.
    cluster_id=$("$PYTHON" -c '
import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(u)')
    say "formatting storage in $KAFKA_DATA_DIR/kraft-logs (cluster id $cluster_id)"
    java "${jvm_log[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" \
      >"$LOG_DIR/format.log" 2>&1 || { cat "$LOG_DIR/format.log" >&2; die "storage format failed"; }
  fi
  say "starting Apache Kafka $(kafka_version) on 127.0.0.1:$KAFKA_PORT (data: $KAFKA_DATA_DIR)"
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS holds several flags on purpose
  setsid java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "${jvm_log[@]}" -cp "$cp" kafka.Kafka "$PROPS" >"$LOG_DIR/kafka.out" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
}

wait_ready() {
  local pid=$1 deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
  until ready; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      show_tail
      die "broker exited during start-up (logs above, full log: $LOG_DIR/server.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_tail
      die "broker (pid $pid) not ready within ${KAFKA_READY_TIMEOUT}s; it is left running for inspection: scripts/kafka.sh down stops it"
    fi
    sleep 0.3
  done
  say "ready on 127.0.0.1:$KAFKA_PORT (pid $pid)"
}

show_tail() {
  say "last lines of $LOG_DIR/server.log and kafka.out:"
  tail -n 25 "$LOG_DIR/server.log" >&2 2>/dev/null || true
  tail -n 15 "$LOG_DIR/kafka.out" >&2 2>/dev/null || true
}

cmd_down() {
  local pid
  if ! pid=$(running_pid); then say "not running (data dir $KAFKA_DATA_DIR)"; return 0; fi
  say "stopping broker pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "broker did not stop within 30s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    if ready; then say "running (pid $pid), ready on 127.0.0.1:$KAFKA_PORT"; return 0; fi
    say "running (pid $pid) but not answering metadata requests on 127.0.0.1:$KAFKA_PORT"; return 1
  fi
  say "not running (data dir $KAFKA_DATA_DIR)"
  return 3
}

cmd_logs() {
  [ -f "$LOG_DIR/server.log" ] || die "no broker log yet at $LOG_DIR/server.log"
  if [ -t 1 ]; then exec tail -n 100 -F "$LOG_DIR/server.log"; fi
  tail -n 200 "$LOG_DIR/server.log"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  libs) need_tools; resolve_libs; say "jars ready in $KAFKA_LIBS_DIR" ;;
  *) echo "usage: $0 {up|down|status|logs|libs}" >&2; exit 2 ;;
esac
