# Kino: the two commands the README promises, and the ones developers use.
#   make demo   set up .venv, start a local cluster on the demo model, generate a video with audio
#   make test   set up .venv and run the test suite (GPU tests deselected)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv lock image image-smoke bench-engines bench-serving clean protos train-demo

venv: $(STAMP)

# The venv is exactly requirements/dev.lock: every package at its locked version, checked against its
# hashes, nothing resolved at install time. torch in it is the CPU build that lies on this machine's disk
# (pip's find-links); pip itself and the build backend are locked too. A changed lock or pyproject.toml
# makes the venv anew, so nothing stays from the last one. `make lock` rewrites the locks.
$(STAMP): requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --no-cache-dir --require-hashes --no-deps -r requirements/dev.lock
	$(PY) -m pip install -q --no-cache-dir --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Rewrite requirements/*.lock from pyproject.toml (needs the package index; ~15 min). It runs in the venv as it is
# (pip-tools comes with the dev lock), not one made anew: a new dependency in pyproject.toml is not locked yet.
lock:
	test -x $(PY) || $(MAKE) venv
	$(PY) requirements/lock.py

# Kino's CPU image from deploy/image/Containerfile on a Debian base made here by debootstrap (deploy/image/build.sh;
# needs root for debootstrap and podman), then the smoke test: kino --help, kino demo and kino serve in podman.
image:
	bash deploy/image/build.sh

image-smoke: $(STAMP)
	$(PY) deploy/image/smoke.py

demo: $(STAMP)
	$(VENV)/bin/kino demo -o out/demo.mp4

# Two workers (pytest-xdist): one runs the tests that share the session's cluster (tests/integration), the other the
# rest, each module whole (tests/conftest.py). -n 0 runs them in this process, one after another.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not gpu" -q --durations=25 -n 2

# Train the demo preset's weights on the synthetic world (training/train_demo.py) into engines/weights/demo/
# (loss curves in out/train_demo/): the full run (about an hour on two idle CPU cores: autoencoders 30 min, DiT
# 30), then its DiT 4000 steps longer (about 30 min): an hour and a half in all. On a time budget, run either in
# chunks: --chunk-minutes 50, then --resume out/train_demo/state until it writes the checkpoint.
train-demo: $(STAMP)
	$(PY) -m training.train_demo --report out/train_demo --out out/train_demo/base
	$(PY) -m training.train_demo --report out/train_demo --warm-start out/train_demo/base --warm-dit \
		--recipe continue --out engines/weights/demo

bench-engines: $(STAMP)
	$(PY) -m loadtests.bench_engines

bench-serving: $(STAMP)
	$(PY) -m loadtests.bench_serving

clean:
	rm -rf $(VENV) out .pytest_cache

# Regenerate kino_api/v1/*_pb2*.py from protos/ with the locked grpcio-tools: the generated code has a package of its
# own, which the server (serving/frontend) and the clients (kino/, loadtests) both import; never edit it
# (tests/serving/test_protos.py fails when it differs from this generator's output).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/kino_api/v1/*.proto
