# The two commands of the README: `make demo` and `make test` (as root on a fresh Debian 12/13).
PYTHON ?= python3
VENV := build/venv
PY := $(VENV)/bin/python
export KP_REQUIRE_RUNTIME := 1

.PHONY: demo test unit lint testenv slurm hub users venv bench clean docs soak

$(PY): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || (apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV))
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(PY)

venv: $(PY)

testenv:
	bash scripts/setup-testenv.sh

slurm:
	bash scripts/slurm-cluster.sh start

# unprivileged test users (kpuser1, kpuser2) with their own venv and /dev/fuse access
users: venv testenv
	bash scripts/setup-users.sh

# JupyterHub's configurable-http-proxy (npm) and Debian's chromium for the browser test
hub: venv
	bash scripts/setup-hub.sh

demo: venv testenv
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check kernelprovider tests bench scripts

unit: venv
	$(PY) -m pytest -q tests/unit

test: venv testenv slurm hub users lint
	$(PY) -m pytest -q -rs

bench: venv testenv slurm
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build/venv

docs: venv
	$(PY) scripts/config-reference.py

soak: venv testenv slurm
	$(PY) bench/soak.py --local 100 --slurm 48 --slurm-parallel 16
