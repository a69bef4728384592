# kiln developer entry points. `make setup` is idempotent and is the first step of test, demo and bench.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := docker-registry skopeo umoci runc uidmap busybox-static apache2-utils bubblewrap \
                buildah podman python3-venv python3-dev git debootstrap
BUILDER_USER := builder

.PHONY: setup venv system-packages builder-user test lint typecheck pytest demo demo-python bench clean

setup: system-packages builder-user venv

system-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

builder-user:
	@id -u $(BUILDER_USER) >/dev/null 2>&1 || useradd --create-home --shell /bin/bash $(BUILDER_USER)
	@grep -q '^$(BUILDER_USER):' /etc/subuid || echo '$(BUILDER_USER):200000:65536' >> /etc/subuid
	@grep -q '^$(BUILDER_USER):' /etc/subgid || echo '$(BUILDER_USER):200000:65536' >> /etc/subgid

venv: $(VENV)/.installed

# Debian's python (not a pyenv build under /root) so the unprivileged builder user can run it.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

lint: setup
	$(BIN)/ruff check src tests bench dev examples deploy

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: setup
	$(BIN)/ruff check src tests bench dev examples deploy
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: setup
	$(BIN)/python examples/demo.py

# Opt-in: the Python S2I builder's Debian base comes from debootstrap (about 3-4 minutes).
demo-python: setup
	$(BIN)/python examples/s2i-python/demo_python.py

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Local control plane for tests and demos (dev/cluster.py, docs/dev-cluster.md): etcd,
# kube-apiserver, kube-controller-manager (built once into ~/.cache/kiln-testbin), a loopback
# registry and kiln's test-only node agent; state, PIDs and kubeconfig under .kiln-dev/.
.PHONY: cluster-up cluster-down
cluster-up: setup
	$(BIN)/python -m dev.cluster up

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m dev.cluster down; else echo "no venv: nothing was started"; fi
