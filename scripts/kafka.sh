#!/usr/bin/env bash
# Local Apache Kafka (KRaft combined mode, no Docker) for development and tests: one node, or a
# replicated cluster of KAFKA_NODES nodes (3: `make cluster-up`).
#
#   scripts/kafka.sh up         resolve jars (once), format storage (once), start every node, wait until ready
#   scripts/kafka.sh down       stop the node(s) started from this data dir (SIGTERM, then SIGKILL)
#   scripts/kafka.sh status     say whether each node runs and answers metadata requests (exit 0 if all ready)
#   scripts/kafka.sh logs [N]   tail the broker log (of node N; of every node by default)
#   scripts/kafka.sh libs       only resolve the jars from Maven Central
#   scripts/kafka.sh bootstrap  print the bootstrap string, 127.0.0.1:p1[,127.0.0.1:p2,…], on stdout
#   scripts/kafka.sh kill N     SIGKILL node N (fault tests)
#   scripts/kafka.sh stop N     SIGTERM node N (controlled shutdown), SIGKILL after 30 s
#   scripts/kafka.sh start N    start node N again; wait until it answers and the metadata lists every node
#   scripts/kafka.sh leader TOPIC [PARTITION]   print the node id leading the partition (0 by default)
#
# Settings (environment):
#   KAFKA_NODES            nodes: 1, or 3 for a replicated cluster     (1)
#   KAFKA_PORT             client listener port (of node 1)           (9092; 9192 with KAFKA_NODES > 1)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port (of node 1) (KAFKA_PORT + 1)
#   KAFKA_PORT_STEP        node i listens on KAFKA_PORT + STEP*(i-1), its controller on
#                          KAFKA_CONTROLLER_PORT + STEP*(i-1), its SASL listener on
#                          KAFKA_SASL_PORT + STEP*(i-1)                (10)
#   KAFKA_PORTS, KAFKA_CONTROLLER_PORTS, KAFKA_SASL_PORTS
#                          explicit comma lists, one port per node, instead of the step scheme
#   KAFKA_DATA_DIR         log dirs, pid file, broker logs (cluster: one node-<i>/ folder per node)
#                                                                      (<repo>/.data/kafka; .data/kafka-cluster)
#   KAFKA_LIBS_DIR         resolved jars                               (<repo>/.cache/kafka/libs)
#   KAFKA_READY_TIMEOUT    seconds to wait for readiness               (90; 180 with KAFKA_NODES > 1)
#   KAFKA_HEAP_OPTS        JVM heap flags, per node                    (-Xmx1G -Xms1G; -Xmx512m -Xms512m)
#   KAFKA_GC_OPTS          JVM collector flags, per node               (-XX:+UseG1GC -XX:MaxGCPauseMillis=20)
#   KAFKA_SASL_PORT        also listen with SASL_PLAINTEXT (PLAIN) on this port   (off)
#   KAFKA_SASL_USERS       its users, "user:password[,user:password…]"           (bookstream:bookstream)
#   KAFKA_NETWORK_THREADS  num.network.threads of a single node: half the cores, 1 to 3 (Kafka's 3)
#   KAFKA_IO_THREADS       num.io.threads of a single node: the cores, 2 to 8          (Kafka's 8)
#                          (a local broker shares the machine with its clients: on 2 cores,
#                          1 and 2 threads took a quarter off the latency at 5,000 frames/s;
#                          README "Latency settings"). A cluster's nodes keep Kafka's defaults.
#   KAFKA_PROPERTIES       more server.properties lines for every node, separated by ';' or
#                          newlines, written last (a key given twice: the last wins)   (none)
# A second broker beside the first needs only another KAFKA_PORT and KAFKA_DATA_DIR.
#
# With KAFKA_NODES > 1 every node is broker and controller (node.id 1..N, all of them voters),
# the nodes share one cluster id, and the broker defaults are those of a replicated cluster:
# replication factor 3 (offsets, transaction state, new topics), min.insync.replicas 2,
# transaction.state.log.min.isr 2, no unclean leader election. Nothing is ever deleted by age
# unless a topic asks (log.retention.ms=-1), in both modes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

KAFKA_NODES=${KAFKA_NODES:-1}
[[ $KAFKA_NODES =~ ^[1-9]$ ]] || die "KAFKA_NODES must be a number of nodes from 1 to 9 (1, or 3 for a replicated cluster), not '$KAFKA_NODES'"
if [ "$KAFKA_NODES" = 1 ]; then
  KAFKA_PORT=${KAFKA_PORT:-9092}
  KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$ROOT/.data/kafka}
  KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
  KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
else
  KAFKA_PORT=${KAFKA_PORT:-9192}
  KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$ROOT/.data/kafka-cluster}
  KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-180}
  KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m}
fi
KAFKA_GC_OPTS=${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_PORT_STEP=${KAFKA_PORT_STEP:-10}
KAFKA_PORTS=${KAFKA_PORTS:-}
KAFKA_CONTROLLER_PORTS=${KAFKA_CONTROLLER_PORTS:-}
KAFKA_SASL_PORTS=${KAFKA_SASL_PORTS:-}
KAFKA_LIBS_DIR=${KAFKA_LIBS_DIR:-$ROOT/.cache/kafka/libs}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-}
KAFKA_SASL_USERS=${KAFKA_SASL_USERS:-bookstream:bookstream}
KAFKA_PROPERTIES=${KAFKA_PROPERTIES:-}
CORES=$(nproc 2>/dev/null || echo 2)
clamp() { local v=$1; ((v < $2)) && v=$2; ((v > $3)) && v=$3; echo "$v"; }
KAFKA_NETWORK_THREADS=${KAFKA_NETWORK_THREADS:-$(clamp $((CORES / 2)) 1 3)}
KAFKA_IO_THREADS=${KAFKA_IO_THREADS:-$(clamp "$CORES" 2 8)}
for v in KAFKA_NETWORK_THREADS KAFKA_IO_THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]?$ ]] || die "$v must be a number of threads from 1 to 99, not '${!v}'"
done
POM=$ROOT/kafka/pom.xml
PYTHON=${PYTHON:-python3}
STAMP=$KAFKA_LIBS_DIR/.resolved
CLUSTER_ID_FILE=$KAFKA_DATA_DIR/cluster.id

# The replication defaults: a single node can only hold one copy.
if [ "$KAFKA_NODES" -ge 3 ]; then REPLICATION=3; MIN_ISR=2
else REPLICATION=$KAFKA_NODES; MIN_ISR=1; fi

# The i-th (1-based) entry of a comma list, or empty.
nth() { local IFS=','; local -a items; read -ra items <<<"$1"; echo "${items[$(($2 - 1))]:-}"; }

# Set NODE, NODE_DIR, PORT, CPORT, SPORT, PID_FILE, PROPS, LOG_DIR for node $1.
node() {
  NODE=$1
  if [ "$KAFKA_NODES" = 1 ]; then
    NODE_DIR=$KAFKA_DATA_DIR; PORT=$KAFKA_PORT; CPORT=$KAFKA_CONTROLLER_PORT; SPORT=$KAFKA_SASL_PORT
  else
    local off=$((KAFKA_PORT_STEP * (NODE - 1)))
    NODE_DIR=$KAFKA_DATA_DIR/node-$NODE
    PORT=$(nth "$KAFKA_PORTS" "$NODE"); PORT=${PORT:-$((KAFKA_PORT + off))}
    CPORT=$(nth "$KAFKA_CONTROLLER_PORTS" "$NODE"); CPORT=${CPORT:-$((KAFKA_CONTROLLER_PORT + off))}
    SPORT=$(nth "$KAFKA_SASL_PORTS" "$NODE")
    if [ -z "$SPORT" ] && [ -n "$KAFKA_SASL_PORT" ]; then SPORT=$((KAFKA_SASL_PORT + off)); fi
  fi
  PID_FILE=$NODE_DIR/kafka.pid
  PROPS=$NODE_DIR/server.properties
  LOG_DIR=$NODE_DIR/logs
}

# "what node N is" in messages ("broker" for a single one); pre: the prefix of a status line.
label() { if [ "$KAFKA_NODES" = 1 ]; then echo "broker"; else echo "node $NODE"; fi; }
pre() { if [ "$KAFKA_NODES" = 1 ]; then echo ""; else echo "node $NODE: "; fi; }

all_nodes() { local i; for ((i = 1; i <= KAFKA_NODES; i++)); do echo "$i"; done; }

check_node_arg() {
  [[ ${1:-} =~ ^[1-9]$ ]] && [ "$1" -le "$KAFKA_NODES" ] || die "name a node from 1 to $KAFKA_NODES (KAFKA_NODES=$KAFKA_NODES), not '${1:-}'"
}

voters() {
  local i out="" save_node=${NODE:-}
  for i in $(all_nodes); do node "$i"; out="$out${out:+,}$i@127.0.0.1:$CPORT"; done
  if [ -n "$save_node" ]; then node "$save_node"; fi
  echo "$out"
}

bootstrap() {
  local i out=""
  for i in $(all_nodes); do node "$i"; out="$out${out:+,}127.0.0.1:$PORT"; done
  echo "$out"
}

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

# Is PID a broker started from the current node's dir?
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

# Does the current node answer a metadata request listing every node (and itself)?
ready() {
  if [ "$KAFKA_NODES" = 1 ]; then "$PYTHON" "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$PORT"; return; fi
  "$PYTHON" "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$PORT" --brokers "$KAFKA_NODES" --node "$NODE"
}

# Does the current node answer at all (however many brokers it lists)?
answers() { "$PYTHON" "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$PORT"; }

write_props() {
  local listeners="PLAINTEXT://127.0.0.1:$PORT" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" sasl=""
  if [ -n "$SPORT" ]; then
    # A second client listener that authenticates (SASL/PLAIN) for users whose brokers need it.
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$SPORT"
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
  local mode_props  # a cluster's replication, or a single node's threads
  if [ "$KAFKA_NODES" -gt 1 ]; then
    mode_props="default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
unclean.leader.election.enable=false"
  else  # a single node shares the machine with its clients: its threads follow the cores
    mode_props="num.network.threads=$KAFKA_NETWORK_THREADS
num.io.threads=$KAFKA_IO_THREADS"
  fi
  cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=$NODE
controller.quorum.voters=$(voters)
listeners=$listeners,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$sasl
log.dirs=$NODE_DIR/kraft-logs
num.partitions=1
offsets.topic.replication.factor=$REPLICATION
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
$mode_props
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Nothing is deleted by age unless a topic asks for it (its own retention.ms).
log.retention.ms=-1
log.segment.bytes=268435456
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
  local line
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    [ -z "$line" ] && continue
    [[ $line =~ ^[A-Za-z0-9._-]+=.*$ ]] || die "KAFKA_PROPERTIES: '$line' is not a key=value line of server.properties"
    printf '%s\n' "$line" >>"$PROPS"
  done < <(printf '%s\n' "$KAFKA_PROPERTIES" | tr ';' '\n')
  chmod 600 "$PROPS"  # may hold SASL passwords
}

new_cluster_id() {
  # A random Kafka Uuid (base64url). Never one starting with '-' (1 in 64): the storage tool
  # would read it as an option ("argument --cluster-id/-t: expected one argument"); Kafka's own
  # Uuid.randomUuid() draws again for the same reason.
  "$PYTHON" -c '
import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(u)'
}

# The one cluster id every node of this data dir is formatted with.
cluster_id() {
  if [ "$KAFKA_NODES" = 1 ]; then new_cluster_id; return; fi
  if [ ! -s "$CLUSTER_ID_FILE" ]; then
    local i id=""
    for i in $(all_nodes); do  # a node formatted before: keep its id
      id=$(sed -n 's/^cluster.id=//p' "$KAFKA_DATA_DIR/node-$i/kraft-logs/meta.properties" 2>/dev/null || true)
      [ -n "$id" ] && break
    done
    echo "${id:-$(new_cluster_id)}" >"$CLUSTER_ID_FILE"
  fi
  cat "$CLUSTER_ID_FILE"
}

jvm_log() { JVM_LOG=(-Dlog4j.configuration="file:$ROOT/kafka/log4j.properties" -Dkafka.logs.dir="$LOG_DIR"); }

# Check the current node's ports, write its properties, format its storage unless formatted
# (in the background: FORMAT_PIDS collects the jobs).
prepare() {
  mkdir -p "$NODE_DIR" "$LOG_DIR" 2>/dev/null || die "cannot create $NODE_DIR; set KAFKA_DATA_DIR to a writable folder."
  [ -w "$NODE_DIR" ] || die "$NODE_DIR is not writable; set KAFKA_DATA_DIR to a writable folder."
  local p
  for p in "$PORT" "$CPORT" $SPORT; do
    if port_in_use "$p"; then
      die "port $p is already in use by $(port_owner "$p" || echo 'another process'), not by a broker of $KAFKA_DATA_DIR. Stop it, or pick other ports with KAFKA_PORT=... (and KAFKA_DATA_DIR=... for a second broker)."
    fi
  done
  write_props
  jvm_log
  if [ ! -f "$NODE_DIR/kraft-logs/meta.properties" ]; then
    local id; id=$(cluster_id)
    say "formatting storage in $NODE_DIR/kraft-logs (cluster id $id)"
    # a short-lived JVM: no optimising compiler, no G1 threads (three of them start at once)
    java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${JVM_LOG[@]}" -cp "$KAFKA_LIBS_DIR/*" kafka.tools.StorageTool format -t "$id" -c "$PROPS" \
      >"$LOG_DIR/format.log" 2>&1 &
    FORMAT_PIDS+=("$!:$NODE")
  fi
}

# Wait for the formats prepare started; the first that failed stops the script.
wait_formats() {
  local job
  for job in ${FORMAT_PIDS[@]+"${FORMAT_PIDS[@]}"}; do
    node "${job#*:}"
    wait "${job%%:*}" || { cat "$LOG_DIR/format.log" >&2; die "storage format failed"; }
  done
  FORMAT_PIDS=()
}

# Start the current node's JVM (prepared) and write its pid file.
spawn() {
  jvm_log
  if [ "$KAFKA_NODES" = 1 ]; then
    say "starting Apache Kafka $(kafka_version) on 127.0.0.1:$PORT (data: $NODE_DIR)"
  else
    say "starting Apache Kafka $(kafka_version) node $NODE of $KAFKA_NODES on 127.0.0.1:$PORT, controller $CPORT (data: $NODE_DIR)"
  fi
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS and KAFKA_GC_OPTS hold several flags on purpose
  setsid java $KAFKA_HEAP_OPTS $KAFKA_GC_OPTS -Djava.awt.headless=true \
    "${JVM_LOG[@]}" -cp "$KAFKA_LIBS_DIR/*" kafka.Kafka "$PROPS" >"$LOG_DIR/kafka.out" 2>&1 </dev/null &
  echo "$!" >"$PID_FILE"
}

# Wait until every node of "$@" (node numbers) is ready; each must keep running meanwhile.
wait_ready() {
  local deadline=$((SECONDS + KAFKA_READY_TIMEOUT)) pending=("$@") left i pid
  while [ "${#pending[@]}" -gt 0 ]; do
    left=()
    for i in "${pending[@]}"; do
      node "$i"
      pid=$(cat "$PID_FILE" 2>/dev/null || true)
      if ready; then say "$(pre)ready on 127.0.0.1:$PORT (pid $pid)"; continue; fi
      if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PID_FILE"
        show_tail
        if [ "$KAFKA_NODES" -gt 1 ]; then say "the other nodes are left running: KAFKA_NODES=$KAFKA_NODES scripts/kafka.sh down stops them"; fi
        die "$(label) exited during start-up (logs above, full log: $LOG_DIR/server.log)"
      fi
      left+=("$i")
    done
    pending=(${left[@]+"${left[@]}"})
    [ "${#pending[@]}" -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${pending[@]}"; do node "$i"; show_tail; done
      node "${pending[0]}"
      if [ "$KAFKA_NODES" = 1 ]; then
        die "broker (pid $(cat "$PID_FILE" 2>/dev/null)) not ready within ${KAFKA_READY_TIMEOUT}s; it is left running for inspection: scripts/kafka.sh down stops it"
      fi
      die "node(s) ${pending[*]} not ready (answering a metadata request that lists all $KAFKA_NODES brokers) within ${KAFKA_READY_TIMEOUT}s; they are left running for inspection: KAFKA_NODES=$KAFKA_NODES scripts/kafka.sh down stops them"
    fi
    # each probe is a Python process: on a small machine a tight loop slows three starting JVMs
    if [ "$KAFKA_NODES" = 1 ]; then sleep 0.3; else sleep 1; fi
  done
  if [ "$KAFKA_NODES" -gt 1 ]; then say "cluster of $KAFKA_NODES ready; bootstrap $(bootstrap)"; fi
}

show_tail() {
  say "last lines of $LOG_DIR/server.log and kafka.out:"
  tail -n 25 "$LOG_DIR/server.log" >&2 2>/dev/null || true
  tail -n 15 "$LOG_DIR/kafka.out" >&2 2>/dev/null || true
}

# Start the nodes given (numbers) that are not running; wait until all of them are ready.
start_nodes() {
  need_tools
  resolve_libs
  mkdir -p "$KAFKA_DATA_DIR" 2>/dev/null || die "cannot create $KAFKA_DATA_DIR; set KAFKA_DATA_DIR to a writable folder."
  [ -w "$KAFKA_DATA_DIR" ] || die "$KAFKA_DATA_DIR is not writable; set KAFKA_DATA_DIR to a writable folder."
  local i pid todo=()
  FORMAT_PIDS=()
  for i in "$@"; do
    node "$i"
    if pid=$(running_pid); then
      if ready; then say "$(pre)already running (pid $pid) on 127.0.0.1:$PORT"; continue; fi
      say "$(pre)running (pid $pid) but not ready yet; waiting"
      continue
    fi
    prepare
    todo+=("$i")
  done
  wait_formats
  # Every node at once: a quorum forms only once a majority of the controllers runs.
  for i in ${todo[@]+"${todo[@]}"}; do node "$i"; spawn; done
  wait_ready "$@"
}

cmd_up() {
  # shellcheck disable=SC2046  # one word per node number
  start_nodes $(all_nodes)
}

# Signal the current node and wait (up to 30 s for SIGTERM, then SIGKILL).
signal_node() {
  local sig=$1 pid
  if ! pid=$(running_pid); then say "$(label) not running (data dir $NODE_DIR)"; return 0; fi
  say "$( [ "$sig" = KILL ] && echo killing || echo stopping ) $(label) pid $pid"
  kill "-$sig" "$pid" 2>/dev/null || true
  wait_gone "$pid"
  rm -f "$PID_FILE"
}

wait_gone() {
  local pid=$1 deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$(label) (pid $pid) did not stop within 30s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

cmd_down() {
  local i pid pids=() nodes=()
  for i in $(all_nodes); do
    node "$i"
    if pid=$(running_pid); then pids+=("$pid"); nodes+=("$i"); fi
  done
  if [ "${#pids[@]}" = 0 ]; then say "not running (data dir $KAFKA_DATA_DIR)"; return 0; fi
  # Every node at once: a node stopped alone would wait for the others to take its partitions.
  for i in "${!pids[@]}"; do
    node "${nodes[$i]}"
    say "stopping $(label) pid ${pids[$i]}"
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    node "${nodes[$i]}"
    wait_gone "${pids[$i]}"
    rm -f "$PID_FILE"
  done
  say "stopped"
}

cmd_status() {
  local i pid running=0 ready_n=0
  for i in $(all_nodes); do
    node "$i"
    if pid=$(running_pid); then
      running=$((running + 1))
      if ready; then
        ready_n=$((ready_n + 1))
        say "$(pre)running (pid $pid), ready on 127.0.0.1:$PORT"
      elif [ "$KAFKA_NODES" -gt 1 ] && answers; then
        say "$(pre)running (pid $pid) on 127.0.0.1:$PORT, answering, but its metadata does not list all $KAFKA_NODES brokers"
      else
        say "$(pre)running (pid $pid) but not answering metadata requests on 127.0.0.1:$PORT"
      fi
    else
      say "$(pre)not running (data dir $NODE_DIR)"
    fi
  done
  if [ "$ready_n" = "$KAFKA_NODES" ]; then
    if [ "$KAFKA_NODES" -gt 1 ]; then say "cluster ready: $ready_n of $KAFKA_NODES nodes; bootstrap $(bootstrap)"; fi
    return 0
  fi
  if [ "$running" -gt 0 ]; then
    if [ "$KAFKA_NODES" -gt 1 ]; then say "cluster not fully ready: $ready_n of $KAFKA_NODES nodes ready, $running running"; fi
    return 1
  fi
  return 3
}

cmd_logs() {
  local files=() i
  if [ -n "${1:-}" ]; then check_node_arg "$1"; node "$1"; files=("$LOG_DIR/server.log")
  else for i in $(all_nodes); do node "$i"; files+=("$LOG_DIR/server.log"); done; fi
  local existing=()
  for i in "${files[@]}"; do [ -f "$i" ] && existing+=("$i"); done
  [ "${#existing[@]}" -gt 0 ] || die "no broker log yet at ${files[*]}"
  if [ -t 1 ]; then exec tail -n 100 -F "${existing[@]}"; fi
  tail -n 200 "${existing[@]}"
}

cmd_leader() {
  local topic=${1:-} part=${2:-0} i
  [ -n "$topic" ] || die "usage: scripts/kafka.sh leader TOPIC [PARTITION]"
  for i in $(all_nodes); do
    node "$i"
    if "$PYTHON" "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$PORT" --leader "$topic:$part"; then return 0; fi
  done
  die "no node answered with a leader for $topic:$part"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cmd_logs "${2:-}" ;;
  libs) need_tools; resolve_libs; say "jars ready in $KAFKA_LIBS_DIR" ;;
  bootstrap) bootstrap ;;
  kill) check_node_arg "${2:-}"; node "$2"; signal_node KILL ;;
  stop) check_node_arg "${2:-}"; node "$2"; signal_node TERM ;;
  start) check_node_arg "${2:-}"; start_nodes "$2" ;;
  leader) cmd_leader "${2:-}" "${3:-}" ;;
  *) echo "usage: $0 {up|down|status|logs [N]|libs|bootstrap|kill N|stop N|start N|leader TOPIC [PARTITION]}" >&2; exit 2 ;;
esac
