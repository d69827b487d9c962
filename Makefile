# vidtag: `make serve` starts the service on the bundled model, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
BENCH_STAMP = $(VENV)/.bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROTO   = proto/vidtag/v1/tagger.proto
STUBS   = src/vidtag/v1/tagger_pb2.py
PORT   ?= 50051
MODELS ?= models
# The default model: how it was trained (make model reproduces it).
SEED_TRAIN ?= 1
SEED_TEST  ?= 2
N_TRAIN    ?= 2400
N_TEST     ?= 200
WORK       ?= build/stb1
MODEL_VERSION ?= $(shell ls $(MODELS)/stb1 2>/dev/null | sort -n | tail -1 | awk '{print $$1 + 1}')
GPU_END_BY ?= 555
# Extra arguments for benchmarks/decode.py, e.g. BENCH_ARGS=--quick or BENCH_ARGS="--full --repeat 3".
BENCH_ARGS ?=

.PHONY: install proto serve test test-unit test-slow test-integration lint typecheck model model-gpu eval-default bench-decode lock fuzz soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

install: $(STAMP) $(STUBS)

$(STUBS): $(PROTO) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src --grpc_python_out=src $(PROTO)

proto: $(STUBS)

serve: install
	$(VENV)/bin/vidtag serve --port $(PORT) --models $(MODELS)

# `make test` (the README's and CI's test command): the default suite, then the integration
# suite against real tools (about a minute more, installing them first).
test: test-unit test-integration

test-unit: install
	$(PY) -m pytest -q -m "not slow and not integration"

test-slow: install
	$(PY) -m pytest -q -m "slow"

# Tests against real tools (tests/integration): a Prometheus server scraping vidtag, grpcurl
# through reflection, promtool on deploy/prometheus, kubernetes-validate on deploy/k8s,
# check-jsonschema (compose-spec) on docker-compose.yml. Installs the `integration` extra, and
# Debian's prometheus package (prometheus + promtool) when it is missing and we are root.
INTEGRATION_STAMP = $(VENV)/.integration-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(INTEGRATION_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[integration]"
	touch $@

test-integration: install $(INTEGRATION_STAMP)
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else \
	    echo "prometheus/promtool missing (apt-get install prometheus as root): their tests will skip"; \
	  fi; \
	fi
	$(PY) -m pytest -q -m integration

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src

# The bundled default model (stb1/2, x2plus1d_m) was trained on one GPU by this target, run on a
# CUDA machine in GPU_END_BY seconds: synthesise while training in stages on the clips written so
# far, export as the next version (scripts/train_gpu.sh).
model-gpu: install
	ARCH=x2plus1d_m NAME=stb1 VERSION=$(MODEL_VERSION) SEED_TRAIN=$(SEED_TRAIN) \
	  END_BY=$(GPU_END_BY) WORK=$(WORK)/gpu PY=$(PY) bash scripts/train_gpu.sh
	cp -r $(WORK)/gpu/models/stb1/$(MODEL_VERSION) $(MODELS)/stb1/
	$(MAKE) eval-default

# The CPU recipe of the default model (stb1/4, x2plus1d_ot, ~3 h on 2 cores): synthesise; train
# x2plus1d_o at 8x160x96 with the generator's object masks for an hour; extend it with the track
# head and train 50 min more; go on at 8x224x128 with spread fills (--fill 8) for 70 min;
# export, evaluate.
TRAIN = $(VENV)/bin/vidtag train --manifest $(WORK)/train/manifest.jsonl --aux-masks 1.0 \
	--augment full --epochs 1000
model: install
	$(VENV)/bin/vidtag synth --split train --count $(N_TRAIN) --seed $(SEED_TRAIN) --out $(WORK)/train
	$(TRAIN) --out $(WORK)/run-o --arch x2plus1d_o --time-budget 3600
	$(TRAIN) --out $(WORK)/run-ot --arch x2plus1d_ot --time-budget 3000 --lr 1e-3 --warmup 0.05 \
	  --init $(WORK)/run-o/best.pt
	$(TRAIN) --out $(WORK)/run-hr --arch x2plus1d_ot --height 224 --width 128 --fill 8 \
	  --time-budget 4200 --lr 1e-3 --warmup 0.05 --init $(WORK)/run-ot/best.pt
	$(VENV)/bin/vidtag export --checkpoint $(WORK)/run-hr/best.pt --out $(MODELS) --name stb1 --version $(MODEL_VERSION)
	$(MAKE) eval-default

eval-default: install
	test -f $(WORK)/test/manifest.jsonl || $(VENV)/bin/vidtag synth --split test --count $(N_TEST) --seed $(SEED_TEST) --out $(WORK)/test
	$(VENV)/bin/vidtag eval --models $(MODELS) --manifest $(WORK)/test/manifest.jsonl

# Decode benchmark: sample_frames (fast, exact) against OpenCV / PyAV (/ torchcodec if it imports)
# on a clip corpus encoded once into build/bench-decode/corpus; JSON in build/bench-decode.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[opencv]"
	touch $@

bench-decode: install $(BENCH_STAMP)
	$(PY) benchmarks/decode.py $(BENCH_ARGS)

# Load benchmark (`vidtag bench`, src/vidtag/client/bench.py). Installs the `bench` extra
# (matplotlib) if missing, starts `vidtag serve` on a free port with the bundled model (log in
# build/bench/server.log), waits for health SERVING, then runs the standard sweep over LOAD_CLIPS
# uniform STB-1 test clips (30 s, 540x960, 30 fps, H.264, keyframe every 4 s; generated once into
# build/bench and reused): closed loop at concurrency 1 for 60 requests, then open-loop Poisson
# arrivals at 5, 10, 20, 30 and 40 requests/s for 20 s each. Writes build/bench/report.json
# (per-step summaries and raw samples) and build/bench/report.png (latency CDFs; p50/p99 latency
# and achieved throughput against offered load); the server is stopped when the recipe exits.
# LOAD_ARGS adds or overrides `vidtag bench` flags (e.g. LOAD_ARGS="--duration 5"),
# LOAD_SERVE_ARGS passes flags to `vidtag serve`.
LOAD_STAMP = $(VENV)/.bench-load-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
LOAD_CLIPS ?= 8
LOAD_SPEC ?= duration=30,size=540x960,fps=30,codec=h264,gop=4s,rotation=0,vfr=false,audio=false
LOAD_ARGS ?=
LOAD_SERVE_ARGS ?= --metrics-port 0

.PHONY: bench

$(LOAD_STAMP): $(STAMP)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	touch $@

bench: install $(LOAD_STAMP)
	mkdir -p build/bench
	set -e; \
	port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	$(VENV)/bin/vidtag serve --host 127.0.0.1 --port $$port --models $(MODELS) --log-level WARNING \
	  $(LOAD_SERVE_ARGS) > build/bench/server.log 2>&1 & \
	pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	echo "vidtag serve: 127.0.0.1:$$port (pid $$pid); waiting for SERVING"; \
	for i in $$(seq 300); do \
	  kill -0 $$pid 2>/dev/null || { cat build/bench/server.log; exit 1; }; \
	  $(PY) -c "import sys; from vidtag.client.grpc_client import VidtagClient as C; \
	    sys.exit(C('127.0.0.1:$$port', timeout=2).health() != 'SERVING')" 2>/dev/null && break; \
	  sleep 1; \
	done; \
	$(VENV)/bin/vidtag bench --server 127.0.0.1:$$port --synth $(LOAD_CLIPS) --clip-spec $(LOAD_SPEC) \
	  --sweep 1 --requests 60 --rates 5,10,20,30,40 --duration 20 --wait 30 \
	  --json build/bench/report.json --png build/bench/report.png $(LOAD_ARGS)

# Exact pins (versions and hashes) the container images install, from pyproject.toml's
# dependencies: requirements/serve.lock (Dockerfile: Python 3.11) and requirements/gpu.lock
# (Dockerfile.gpu: + the nvdec extra, Python 3.12, constrained to serve.lock's versions), for
# x86_64 Linux. uv (pinned) is installed from PyPI into build/lock-venv. Existing pins are kept;
# LOCK_ARGS=--upgrade moves everything to the newest allowed versions.
UV_VERSION ?= 0.13.9
LOCK_VENV  ?= build/lock-venv
LOCK_ARGS  ?=

lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv==$(UV_VERSION); }
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes $(LOCK_ARGS) -o requirements/serve.lock
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra nvdec --constraint requirements/serve.lock \
	  --python-version 3.12 --python-platform x86_64-manylinux_2_28 --generate-hashes $(LOCK_ARGS) \
	  -o requirements/gpu.lock

# Fuzzing (fuzz/fuzz_decode.py): atheris (libFuzzer) over the decode entry point with the
# serving sampling spec and limits, time-boxed to FUZZ_SECONDS; a finding does not end the run
# (libFuzzer restarts on the grown corpus). Seeds are encoded into build/fuzz/seeds, the corpus
# grows in build/fuzz/corpus, crashes/timeouts/OOMs land in build/fuzz/artifacts (replay one:
# $(PY) fuzz/fuzz_decode.py build/fuzz/artifacts/<file>). FUZZ_ARGS adds libFuzzer flags, e.g.
# FUZZ_ARGS=-timeout=5. One process (one core); exits non-zero if anything was found.
FUZZ_SECONDS ?= 1200
FUZZ_ARGS ?=
FUZZ_STAMP = $(VENV)/.fuzz-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(FUZZ_STAMP): $(STAMP)
	$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q -e ".[fuzz]"
	touch $@

fuzz: install $(FUZZ_STAMP)
	$(PY) fuzz/fuzz_decode.py --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# Soak and overload (benchmarks/soak.py; on demand, ~15 min, best on a quiet machine): starts
# `vidtag serve` on a free port, measures closed-loop saturation, then 10 min of Poisson load at
# 70 % of it (zero errors, server RSS growth < 10 %), 1 min at 3x (sheds with
# RESOURCE_EXHAUSTED, no other error), 30 s at 50 % (zero errors, latency back near the soak's).
# Table on stdout, JSON in build/soak/soak.json; fails if a criterion fails. SOAK_ARGS=--quick
# runs 20 s phases on small clips; e.g. SOAK_ARGS="--minutes 30 --serve-arg=--workers=4".
SOAK_ARGS ?=

soak: install
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# GPU benchmark (issue 6; benchmarks/gpu.py, about 8 min on one H100 with 16 cores, clip
# generation included): fresh `vidtag serve --device cuda` per (model, decoder): the bundled
# model and R(2+1)D-18 8x112x112 (random weights, exported once into build/gpu-bench), NVDEC vs
# PyAV (and hybrid while the budget lasts); latency at concurrency 1 on 30 s 540x960 H.264
# clips, throughput and p50/p99 at 8/64/256, GPU memory after 100 and 10 000 mixed clips;
# PASS/FAIL per bar of the issue, JSON in build/gpu-bench/gpu.json. GPU_BENCH_ARGS=--dry-run
# runs the same path on the CPU in about 2 minutes; on the device tool use
# scripts/gpu_check.sh (it installs the carried wheels and generates the stubs).
GPU_BENCH_ARGS ?=

.PHONY: bench-gpu

bench-gpu: install
	$(PY) benchmarks/gpu.py $(GPU_BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/vidtag/v1/*_pb2*.py src/vidtag/v1/*_pb2*.pyi
