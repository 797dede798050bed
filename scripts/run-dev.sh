#!/usr/bin/env bash
# `make run`: the daemon in the foreground with a config that needs no root (state under .run/).
# Set MQTT_HOST (and MQTT_PORT) to talk to a broker; without it the daemon runs standalone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN="${RUN_DIR:-$PWD/.run}"
mkdir -p "$RUN"
if [ ! -f "$RUN/demo.tflite" ]; then
  $PY -m edgeagent.engine.testmodels "$RUN/demo.tflite" --kind conv --input-shape 1,64,64,3 --outputs 8 >/dev/null
  echo "generated demo model $RUN/demo.tflite"
fi
if [ ! -f "$RUN/config.toml" ]; then
  cat > "$RUN/config.toml" <<TOML
[device]
id = "dev-$(hostname)"

[mqtt]
host = "${MQTT_HOST:-}"
port = ${MQTT_PORT:-1883}

[model]
name = "demo"
state_dir = "$RUN/state"
initial = "$RUN/demo.tflite"

[input]
source = "synthetic"
rate_hz = 10.0

[telemetry]
interval_s = 3.0

[control]
socket = "$RUN/control.sock"
TOML
  echo "wrote $RUN/config.toml (edit it to change the input, rate or broker)"
fi
echo "edgeagent: Ctrl-C stops; in another shell: .venv/bin/edgeagent -c $RUN/config.toml status"
exec .venv/bin/edgeagent -c "$RUN/config.toml" run
