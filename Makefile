# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# editable_mode=compat: the checkout on sys.path through a plain .pth line. The default mode's
# import hook costs every Python process 25 ms at start (pathlib, re and fnmatch imported by
# site), which every daemon, CLI call and health child of the tests paid, and which made a
# daemon's start look 30 ms slower than it is on a device (scripts/bench_start.py).
EDITABLE := --config-settings editable_mode=compat
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q $(EDITABLE) -e '.[test,camera,images]'
	# the journald library (systemd-python) is optional: build it where libsystemd-dev is present
	if pkg-config --exists libsystemd 2>/dev/null; then $(BIN)/pip install -q $(EDITABLE) -e '.[systemd]'; fi
	touch $@

run: $(VENV)/.installed
	scripts/run-dev.sh

# pytest-xdist: most of a test's time is spent waiting on daemons and brokers, so more workers
# than cores; a file's tests run on one worker, in order (module fixtures: the fleet, the wheel),
# the longest files first (tests/support/schedule.py). 7 workers keep the 2 cores about 90% busy.
# compileall first: with PYTHONDONTWRITEBYTECODE set, every daemon and CLI process the tests
# start would otherwise compile edgeagent from source again. Then one collection with bytecode
# allowed: pytest caches its assertion-rewritten test modules only then, and without that cache
# each pytest process (the workers and the controller) rewrote them all again (5 s of CPU each,
# 2 s with it).
TEST_WORKERS ?= 7
test: $(VENV)/.installed
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m compileall -q edgeagent tests scripts
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -p no:cacheprovider --collect-only > $(VENV)/collect.log \
		|| (cat $(VENV)/collect.log; exit 1)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

bench: $(VENV)/.installed
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) .run build *.egg-info
