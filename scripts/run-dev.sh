#!/usr/bin/env bash
# `make run`: the daemon in the foreground with a config that needs no root (state under .run/).
# Set MQTT_HOST (and MQTT_PORT) to talk to a broker; without it the daemon runs standalone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p .run
if [ ! -f .run/demo.tflite ]; then
  $PY -m edgeagent.engine.testmodels .run/demo.tflite --kind conv --input-shape 1,64,64,3 --outputs 8
  echo "generated demo model .run/demo.tflite"
fi
if [ ! -f .run/config.toml ]; then
  cat > .run/config.toml <<TOML
[device]
id = "dev-$(hostname)"

[mqtt]
host = "${MQTT_HOST:-}"
port = ${MQTT_PORT:-1883}

[model]
name = "demo"
state_dir = "$PWD/.run/state"
initial = "$PWD/.run/demo.tflite"

[input]
source = "synthetic"
rate_hz = 10.0

[telemetry]
interval_s = 3.0

[control]
socket = "$PWD/.run/control.sock"
TOML
  echo "wrote .run/config.toml (edit it to change the input, rate or broker)"
fi
echo "edgeagent: Ctrl-C stops; in another shell: .venv/bin/edgeagent -c .run/config.toml status"
exec .venv/bin/edgeagent -c .run/config.toml run
