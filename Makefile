# Two commands do all the set-up on a fresh machine (Python 3.11+, Go 1.24+, gcc, CMake):
#   make demo   the extender on an embedded in-memory demo cluster (http://127.0.0.1:8888/docs)
#   make lint   ruff (rules, import order, format check), mypy --strict, clang-format on csrc/
#   make test   every test: core, HTTP API, CUDA hook (fake driver), node agent, trace replay,
#               and end to end against a real kube-apiserver + kube-scheduler + kine + kwok,
#               and on a real node (kubelet + containerd + runc; needs root, apt-get installs them)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo lint test controlplane node clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -e '.[sched,node,sim,test,lint,bench]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/flexai-sched serve $(ARGS)

# Go binaries are cached outside the repo, keyed by their wrapper modules (tools/controlplane).
controlplane:
	tools/controlplane/build.sh

# The real node's runtime (containerd, runc from Debian) and its images (tests/realnode).
node:
	tools/node/setup.sh
	tools/node/images.sh >/dev/null

# Lint: ruff's rules (import order included) and its format check, mypy --strict over the
# packages, tests/ and bench/, and clang-format over csrc/ (tools/lint/setup.sh installs it).
lint: $(BIN)/.installed
	tools/lint/setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	find csrc -name '*.[ch]' -print0 | xargs -0 clang-format --dry-run -Werror

# The images (debootstrap and pip: mostly waiting on the network) build beside the Go binaries.
test: $(BIN)/.installed
	tools/browser/setup.sh
	tools/images/setup.sh
	tools/node/setup.sh
	tools/images/build.sh --without-kube-scheduler >/dev/null & images=$$!; \
	  tools/controlplane/build.sh && tools/node/images.sh >/dev/null && wait $$images
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
