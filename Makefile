# The two commands a newcomer needs are `make demo` and `make test`; the rest are for the people who
# work on the code. Every target installs or starts what it needs.

CARGO ?= cargo

.PHONY: help test demo demo-down bench build crds check-crds fmt lint deps controlplane reference

help:
	@echo "make demo       the whole flow on a local control plane and PostgreSQL"
	@echo "make demo-down  stop what 'make demo' started"
	@echo "make test       every check and test (formatting, clippy, CRDs, unit, PostgreSQL, end-to-end)"
	@echo "make bench      the benchmarks (figures printed, nothing asserted)"
	@echo "make crds       regenerate crds/ (and the chart's copy) from the Rust types"

deps:
	hack/install-deps.sh

# NHN's reference files (XSD and samples) first: without them the tests cannot run, and saying so
# takes a second, not the minutes the dependencies take.
reference:
	@hack/nhn-reference.sh >/dev/null

test: reference deps
	hack/test.sh

demo: deps
	hack/demo.sh up

demo-down:
	SFM_DEMO_DIR=$${SFM_DEMO_DIR:-/tmp/sfm-demo} hack/demo.sh down

bench: reference deps
	hack/bench.sh

build:
	$(CARGO) build --bins

crds: build
	./target/debug/sfm-operator crds > crds/sfm.nhn.no.yaml
	cp crds/sfm.nhn.no.yaml charts/sfm-migration/crds/sfm.nhn.no.yaml

check-crds: build
	./target/debug/sfm-operator crds | diff -u crds/sfm.nhn.no.yaml -

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

controlplane:
	hack/build-controlplane.sh
