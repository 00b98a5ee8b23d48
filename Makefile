# driftd developer commands. Every target creates/uses the project's own .venv,
# so `make run` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test demo proto lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

## run: serve gRPC on 127.0.0.1:50051, embedded Chroma in ./driftd_data, metrics on :9464
run: $(STAMP)
	$(VENV)/bin/driftd serve

## test: the whole test suite (real server on loopback, real Chroma, real model)
test: $(STAMP)
	$(PY) -m pytest -q

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

## lint: ruff over the package, tests and benchmarks
lint: $(STAMP)
	$(PY) -m ruff check driftd tests $(wildcard bench)
	$(PY) -m ruff format --check driftd tests $(wildcard bench)

## bench: benchmarks (ratios against the named baselines, measured in one run)
bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) driftd_data .pytest_cache
