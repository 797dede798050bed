#!/usr/bin/env bash
# `make run`: the daemon in the foreground with a config that needs no root (state under .run/).
# Set MQTT_HOST (and MQTT_PORT) to talk to a broker, on any run; without it the daemon runs
# standalone (or with the broker already in .run/config.toml).
# MODEL=path/to/model.tflite (and LABELS=path/to/labels.txt) serves your own model instead of the
# demo: a model (or labels) other than the one .run/ was seeded with starts a fresh .run/state.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN="${RUN_DIR:-$PWD/.run}"
mkdir -p "$RUN"
if [ ! -f "$RUN/demo.tflite" ]; then
  $PY -m edgeagent.engine.testmodels "$RUN/demo.tflite" --kind conv --input-shape 1,64,64,3 --outputs 8 >/dev/null
  echo "generated demo model $RUN/demo.tflite"
fi
if [ -n "${MODEL:-}" ] || [ -n "${LABELS:-}" ]; then
  # your own model: checked by the daemon like any model.initial (it must load and run once)
  [ -z "${MODEL:-}" ] || [ -f "$MODEL" ] || { echo "run-dev: MODEL=$MODEL: no such file" >&2; exit 2; }
  [ -z "${LABELS:-}" ] || [ -f "$LABELS" ] || { echo "run-dev: LABELS=$LABELS: no such file" >&2; exit 2; }
  want="$(cd "$(dirname "${MODEL:-$RUN/demo.tflite}")" && pwd)/$(basename "${MODEL:-$RUN/demo.tflite}")"
  want_labels=""
  [ -z "${LABELS:-}" ] || want_labels="$(cd "$(dirname "$LABELS")" && pwd)/$(basename "$LABELS")"
  seed="$want $(sha256sum < "$want" | cut -c1-64) $want_labels $([ -z "$want_labels" ] || sha256sum < "$want_labels" | cut -c1-64)"
  if [ -f "$RUN/config.toml" ] && [ "$(cat "$RUN/seeded-with" 2>/dev/null)" != "$seed" ]; then
    echo "MODEL/LABELS changed: starting a fresh state ($RUN/state moved to $RUN/state.old)"
    rm -rf "$RUN/state.old"
    [ ! -d "$RUN/state" ] || mv "$RUN/state" "$RUN/state.old"
    $PY - "$RUN/config.toml" "$want" "$want_labels" <<'PY'
import re, sys
path, model, labels = sys.argv[1:4]
text = open(path).read()
text = re.sub(r'(?m)^initial = .*$', f'initial = "{model}"', text, count=1)
text = re.sub(r'(?m)^#? ?labels = .*$\n?', '', text)
if labels:
    text = re.sub(r'(?m)^(initial = .*)$', lambda m: m.group(1) + f'\nlabels = "{labels}"', text, count=1)
open(path, "w").write(text)
PY
  fi
  echo "$seed" > "$RUN/seeded-with"
fi
INITIAL="${want:-$RUN/demo.tflite}"
LABELS_LINE=""
[ -z "${want_labels:-}" ] || LABELS_LINE="labels = \"$want_labels\""
if [ ! -f "$RUN/config.toml" ]; then
  cat > "$RUN/config.toml" <<TOML
[device]
id = "${DEVICE_ID:-dev1}"
groups = ["lab"]

[mqtt]
host = "${MQTT_HOST:-}"
port = ${MQTT_PORT:-1883}

[model]
name = "demo"
state_dir = "$RUN/state"
initial = "$INITIAL"
$LABELS_LINE

[update]
# the public keys that edgeagent keygen --out keys writes beside .run/ (README: Publishing updates)
trusted_keys = ["$(dirname "$RUN")/keys"]
probation_s = 10.0   # short, for trying updates by hand; a device keeps the default (60 s)

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
ident=$($PY -c 'import sys; from edgeagent.config import load; c = load(sys.argv[1])
print(c.device_id, c.topic_prefix, ",".join(c.device.groups) or "-")' "$RUN/config.toml")
read -r dev prefix groups <<<"$ident"
echo "device $dev, topic prefix $prefix, groups $groups (use --device $dev with push)"
echo "edgeagent: Ctrl-C stops; in another shell: .venv/bin/edgeagent -c $RUN/config.toml status"
exec .venv/bin/edgeagent -c "$RUN/config.toml" run
