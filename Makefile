# driftd developer commands. Every target creates/uses the project's own .venv,
# so `make run` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test faults fuzz demo proto lint typecheck bench bench-drift bench-flow bench-perf bench-routing bench-security clean clients clients-check buf-check release-image deploy-check grpcurl-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev,bench]'
	touch $(STAMP)

## run: serve gRPC on 127.0.0.1:50051, embedded Chroma in ./driftd_data, metrics on :9464
run: $(STAMP)
	$(VENV)/bin/driftd serve

## test: the whole test suite (real server on loopback, real Chroma, real model)
test: $(STAMP)
	$(PY) -m pytest -q

## faults: the fault suite (runaway and abandoned pool work, SIGTERM, Chroma server down,
## full volume, kill -9 during writes, plain scripts); also part of `make test`
faults: $(STAMP)
	$(PY) -m pytest -q tests/faults tests/integration/test_crash_recovery.py tests/engine/test_plain_script.py

## fuzz: the fuzz suite at length: 1000 randomised requests per RPC (make test runs 40, fixed)
fuzz: $(STAMP)
	DRIFTD_FUZZ_EXAMPLES=$${DRIFTD_FUZZ_EXAMPLES:-1000} DRIFTD_FUZZ_RANDOM=1 \
		$(PY) -m pytest -q -p no:cacheprovider tests/fuzz

## demo: stream the State of the Union paragraphs through the gRPC API and print the flow
demo: $(STAMP)
	$(VENV)/bin/driftd demo

## proto: regenerate the committed Python code from proto/
proto: $(STAMP)
	rm -f driftd/v1/*_pb2*.py driftd/v1/*_pb2*.pyi driftd/v1/descriptor_set.binpb
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		--include_source_info --descriptor_set_out=driftd/v1/descriptor_set.binpb \
		proto/driftd/v1/*.proto

## lint: ruff over the package, tests and benchmarks; the layer contracts (import-linter, pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check driftd tests $(wildcard bench)
	$(PY) -m ruff format --check driftd tests $(wildcard bench)
	$(VENV)/bin/lint-imports

## typecheck: mypy over driftd/ (the package ships py.typed; settings in pyproject.toml)
typecheck: $(STAMP)
	$(PY) -m mypy

## bench: benchmarks (ratios against the named baselines, measured in one run)
bench: $(STAMP)
	$(PY) -m bench

## bench-flow: flow math on planted systems and SOTU chapters vs DriftDB and ruptures; scale
bench-flow: $(STAMP)
	$(PY) -m bench.flow

## bench-drift: drift tests on planted 384-d Gaussians: false-positive rate, power curve, timings
bench-drift: $(STAMP)
	$(PY) -m bench.drift

## bench-perf: driftd over gRPC vs raw Chroma and fastembed (ingest, search, trajectory), ghz at
## concurrency 1/8/32, flow cost curves; the full curve: make bench-perf PERF_ARGS="--curves 10000,100000,300000,1000000"
bench-perf: $(STAMP)
	nice -n 5 $(PY) -m bench.perf $(PERF_ARGS)

## bench-security: RPC latency p50/p99 with TLS + API keys vs plaintext (ProbeFlow, UpsertPoints)
bench-security: $(STAMP)
	$(PY) -m bench.security

## bench-routing: conversation routing on real SGD dialogues vs driftos-embed: calibration, F1, latency
bench-routing: $(STAMP)
	$(PY) -m bench.routing

## clients: regenerate the committed Go and TypeScript client code from proto/ (buf)
clients: $(STAMP)
	bash ci/gen_clients.sh

## clients-check: generated code current; Go and TypeScript client tests and examples against a live driftd
clients-check: $(STAMP)
	bash ci/clients_check.sh

## buf-check: buf lint (STANDARD) and buf breaking against the newest release image (ci/releases)
buf-check: $(STAMP)
	bash ci/buf_check.sh

## release-image: record release TAG's API for buf breaking (make release-image TAG=v0.2.0; commit the file)
release-image: $(STAMP)
	bash ci/release_image.sh $(TAG)

## deploy-check: offline validation of deploy/ (kustomize overlays, schemas, Dockerfile)
deploy-check: $(STAMP)
	bash deploy/validate.sh

## grpcurl-check: run README.md's grpcurl session against a live driftd
grpcurl-check: $(STAMP)
	bash ci/grpcurl_check.sh

clean:
	rm -rf $(VENV) driftd_data .pytest_cache
