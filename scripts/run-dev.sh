#!/usr/bin/env bash
# `make run`: the daemon in the foreground with a config that needs no root (state under .run/).
# Set MQTT_HOST (and MQTT_PORT) to talk to a broker, on any run; without it the daemon runs
# standalone (or with the broker already in .run/config.toml).
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
# MQTT_HOST / MQTT_PORT apply on every run, not only the first: they are written into the [mqtt]
# table of the kept config (the rest of the user's edits stay), and the broker in use is said.
if [ -n "${MQTT_HOST+x}" ] || [ -n "${MQTT_PORT+x}" ]; then
  $PY - "$RUN/config.toml" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path).read()
m = re.search(r"(?m)^\[mqtt\][ \t]*$", text)
if m is None:
    text = text.rstrip("\n") + "\n\n[mqtt]\n"
    m = re.search(r"(?m)^\[mqtt\][ \t]*$", text)
end = re.search(r"(?m)^\[", text[m.end():])
head, body, tail = text[:m.end()], text[m.end():m.end() + end.start() if end else len(text)], \
    (text[m.end() + end.start():] if end else "")
for key, env, quote in (("host", "MQTT_HOST", True), ("port", "MQTT_PORT", False)):
    if env not in os.environ:
        continue
    val = os.environ[env]
    if not quote and not val.isdigit():
        sys.exit(f"run-dev: {env}={val!r} is not a port number")
    line = f'{key} = "{val}"' if quote else f"{key} = {val}"
    body, n = re.subn(rf"(?m)^[ \t#]*{key}[ \t]*=.*$", line, body, count=1)
    if not n:
        body = "\n" + line + body
open(path, "w").write(head + body + tail)
PY
fi
broker=$($PY -c 'import sys, tomllib; m = tomllib.load(open(sys.argv[1], "rb")).get("mqtt", {})
print("%s:%s" % (m["host"], m.get("port", 1883)) if m.get("host") else "")' "$RUN/config.toml")
if [ -n "$broker" ]; then
  echo "broker $broker (from $RUN/config.toml; MQTT_HOST/MQTT_PORT change it)"
else
  echo "no broker: standalone (set MQTT_HOST, and MQTT_PORT, to connect one)"
fi
echo "edgeagent: Ctrl-C stops; in another shell: .venv/bin/edgeagent -c $RUN/config.toml status"
exec .venv/bin/edgeagent -c "$RUN/config.toml" run
