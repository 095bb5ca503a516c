# mini-PACS: `make run` starts the archive on the embedded default, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run install test check bench bench-scale bench-1m bench-memory docs system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv

# Bytecode compiled at install (uv does not by default): with PYTHONDONTWRITEBYTECODE set,
# as on our machines and in the Dockerfile, every process would otherwise compile every module
# it imports from source each time it starts (~2 s per `pacs serve` process and worker).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(UV) pip install --python $(BIN)/python -q --compile-bytecode -e .
	touch $@

$(TEST_STAMP): pyproject.toml Makefile | $(BIN)/python
	$(UV) pip install --python $(BIN)/python -q --compile-bytecode -e '.[test]'
	touch $@ $(STAMP)

# our own packages are installed editable: compile what changed since the last time
COMPILE_OWN = $(BIN)/python -m compileall -q pacs dicom_scp viewer_api storage >/dev/null

install: $(STAMP)

## run: set up and start the archive (SQLite + folder under ./pacs-data; demo data when empty)
run: $(STAMP)
	$(COMPILE_OWN)
	$(BIN)/pacs serve --demo-if-empty

## system-deps: Debian packages the tests use (DCMTK peers, PostgreSQL, docker-compose to
## validate docker-compose.yml), installed when root
system-deps:
	@missing=""; \
	command -v /usr/bin/storescu >/dev/null || missing="$$missing dcmtk"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql postgresql-contrib"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

## test: install what the tests need and run them
test: $(TEST_STAMP) system-deps
	$(COMPILE_OWN)
	$(BIN)/python -m pytest -q

## check: lint
check: $(TEST_STAMP)
	$(BIN)/ruff check pacs dicom_scp storage viewer_api tests scripts bench

## docs: regenerate docs/configuration.md and docs/conformance.md
docs: $(STAMP)
	$(BIN)/python -m scripts.gen_docs

clean:
	rm -rf $(VENV) .pytest_cache

## bench: C-STORE ingest vs DCMTK storescp and Orthanc (CT slices, then large objects);
## DICOMweb latency vs Orthanc's plugin;
## C-FIND/QIDO-RS over 10k studies and C-MOVE/C-GET/WADO-RS of a 100-slice study vs Orthanc;
## server memory while a 1 GiB object goes in and out (C-STORE, C-GET, WADO-RS, STOW-RS)
## (100k studies: make bench-scale)
bench: $(TEST_STAMP) system-deps
	$(COMPILE_OWN)
	@command -v Orthanc >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc >/dev/null; } || true
	@command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc-dicomweb >/dev/null; } || true
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/large.py
	$(BIN)/python bench/dicomweb.py
	$(BIN)/python bench/query.py $(BENCH_QUERY_ARGS)
	$(BIN)/python bench/memory.py

## bench-scale: C-FIND/QIDO-RS over 100k studies vs Orthanc, compared with the last 10k run,
## then C-STORE into copies of both loaded targets against empty ones
## (loading takes ~25 min on 2 cores; the loaded targets stay in BENCH_SCALE_WORK for next time)
BENCH_SCALE_WORK ?= /var/tmp/pacs-bench-100k
bench-scale: $(TEST_STAMP) system-deps
	$(COMPILE_OWN)
	$(BIN)/python bench/query.py --studies 100000 --no-retrieve --work $(BENCH_SCALE_WORK)
	$(BIN)/python bench/ingest.py --preloaded $(BENCH_SCALE_WORK)

## bench-1m: the query benchmark over 1,000,000 studies (the optional long run of issue 5:
## loading takes hours on 2 cores and ~35 GB of disk in BENCH_1M_WORK, kept for next time;
## a load cut short goes on from the step it was in when run again)
BENCH_1M_WORK ?= /var/tmp/pacs-bench-1m
bench-1m: $(TEST_STAMP) system-deps
	$(COMPILE_OWN)
	$(BIN)/python bench/query.py --studies 1000000 --no-retrieve --work $(BENCH_1M_WORK)

## bench-memory: resident memory of the archive while 10,000 CT instances (5 GB) go in over
## four associations, on both backend pairs (bench/results/ingest-10k-memory.md)
bench-memory: $(TEST_STAMP) system-deps
	$(COMPILE_OWN)
	$(BIN)/python bench/ingest.py --instances 10000 --rounds 1 --assoc 4 \
	  --targets pacs-embedded,pacs-postgres-s3 --save-as ingest-10k-memory
