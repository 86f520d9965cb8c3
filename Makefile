# Kino: the two commands the README promises, and the ones developers use.
#   make demo   set up .venv, start a local cluster on the demo model, generate a video with audio
#   make test   set up .venv and run the test suite (GPU tests deselected)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench-engines bench-serving clean protos train-demo

venv: $(STAMP)

# torch first and pinned: on CPU machines 2.13.0 is a local wheel; anything else pulls CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kino demo -o out/demo.mp4

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not gpu" -q --durations=25

# Train the demo preset's weights on the synthetic world (training/train_demo.py) into engines/weights/demo/
# (loss curves in out/train_demo/; about an hour on two CPU cores).
train-demo: $(STAMP)
	$(PY) -m training.train_demo --report out/train_demo

bench-engines: $(STAMP)
	$(PY) -m loadtests.bench_engines

bench-serving: $(STAMP)
	$(PY) -m loadtests.bench_serving

clean:
	rm -rf $(VENV) out .pytest_cache

# Regenerate kino/v1/*_pb2*.py from protos/ (generated code lives apart, in kino/; never edit it).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/kino/v1/*.proto
