#!/usr/bin/env bash
# A local Flink 1.19 session cluster (1 jobmanager + 1 taskmanager, bound to localhost) from the
# distribution that `engines/fetch.sh flink-dist` unpacked.
#
# Usage: engines/flink-cluster.sh start|stop|status
#   start   picks free ports, writes a config into $BEAM_ENGINES_CACHE/flink-cluster/conf,
#           starts the cluster, waits for its REST API and prints `localhost:<rest port>`
#           (the value for --flink_master). Already running: prints the address again.
#   stop    stops it.   status: prints the address and exits 0 when it answers, else exits 1.
# Submit with: --runner=FlinkRunner --flink_version=1.19 --flink_master=localhost:<port>
#              --environment_type=LOOPBACK
set -euo pipefail

CACHE="${BEAM_ENGINES_CACHE:-$HOME/.cache/beam-feature-engines}"
FLINK_DIST_VERSION=1.19.0
export FLINK_HOME="$CACHE/flink-$FLINK_DIST_VERSION"
RUN="$CACHE/flink-cluster"
export FLINK_CONF_DIR="$RUN/conf" FLINK_LOG_DIR="$RUN/log"
PY="$(command -v python3 || command -v python)"

say() { echo "flink-cluster.sh: $*" >&2; }
answers() { [ -f "$RUN/rest-port" ] && curl -sf -m 5 "http://localhost:$(cat "$RUN/rest-port")/overview" >/dev/null; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ -x "$FLINK_HOME/bin/start-cluster.sh" ] || { say "no Flink at $FLINK_HOME: run engines/fetch.sh flink-dist"; exit 1; }

case "${1:-}" in
  start)
    if answers; then echo "localhost:$(cat "$RUN/rest-port")"; exit 0; fi
    mkdir -p "$FLINK_CONF_DIR" "$FLINK_LOG_DIR" "$RUN/pid" "$RUN/tmp"
    rest="$(free_port)"; rpc="$(free_port)"
    cp -f "$FLINK_HOME/conf/log4j.properties" "$FLINK_HOME/conf/log4j-console.properties" \
      "$FLINK_HOME/conf/log4j-cli.properties" "$FLINK_CONF_DIR/"
    echo localhost:"$rest" > "$FLINK_CONF_DIR/masters"
    echo localhost > "$FLINK_CONF_DIR/workers"
    # The JVM flags Flink ships for Java 17, from its own config.yaml.
    javaopts="$(grep -A4 '^env:' "$FLINK_HOME/conf/config.yaml" | sed -n 's/^ *all: //p')"
    cat > "$FLINK_CONF_DIR/config.yaml" <<EOF
env:
  java:
    opts:
      all: $javaopts
  pid:
    dir: $RUN/pid
  log:
    dir: $FLINK_LOG_DIR
io:
  tmp:
    dirs: $RUN/tmp
jobmanager:
  bind-host: localhost
  rpc:
    address: localhost
    port: $rpc
  memory:
    process:
      size: 1024m
taskmanager:
  bind-host: localhost
  host: localhost
  numberOfTaskSlots: 2
  memory:
    process:
      size: 1536m
parallelism:
  default: 1
rest:
  address: localhost
  bind-address: localhost
  port: $rest
blob:
  server:
    port: "0"
EOF
    echo "$rest" > "$RUN/rest-port"
    "$FLINK_HOME/bin/start-cluster.sh" > "$FLINK_LOG_DIR/start.out" 2>&1
    for _ in $(seq 60); do
      if curl -sf -m 2 "http://localhost:$rest/overview" | grep -q '"taskmanagers":[1-9]'; then
        echo "localhost:$rest"; exit 0
      fi
      sleep 1
    done
    say "cluster did not come up in 60 s; logs in $FLINK_LOG_DIR"; exit 1 ;;
  stop)
    "$FLINK_HOME/bin/stop-cluster.sh" > "$FLINK_LOG_DIR/stop.out" 2>&1 || true
    rm -f "$RUN/rest-port" ;;
  status)
    if answers; then echo "localhost:$(cat "$RUN/rest-port")"; else exit 1; fi ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
