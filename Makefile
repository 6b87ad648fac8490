# The two commands a newcomer needs are `make demo` and `make test`; the rest are for the people who
# work on the code. Every target installs or starts what it needs.

CARGO ?= cargo

.PHONY: help test test-node demo demo-down demo-local demo-local-down bench build crds check-crds fmt lint deps controlplane node reference

help:
	@echo "make demo            the whole flow on chart-installed pods on a real local node, left running (root)"
	@echo "make demo-down       stop what 'make demo' started"
	@echo "make demo-local      the same flow as local processes beside a local control plane (no root, no node)"
	@echo "make demo-local-down stop what 'make demo-local' started"
	@echo "make test            every check and test (formatting, clippy, CRDs, unit, PostgreSQL, end-to-end,"
	@echo "                     the chart on a real local node; root)"
	@echo "make test-node       only the chart on a real local node: images, pods, NetworkPolicy, failover (root)"
	@echo "make bench           the benchmarks (figures printed, nothing asserted)"
	@echo "make crds            regenerate crds/ (and the chart's copy) from the Rust types"

deps:
	hack/install-deps.sh

# NHN's reference files (XSD and samples) first: without them the tests cannot run, and saying so
# takes a second, not the minutes the dependencies take.
reference:
	@hack/nhn-reference.sh >/dev/null

test: reference deps
	hack/test.sh

test-node: deps
	hack/test-node.sh

demo: deps
	hack/demo.sh up

demo-down:
	hack/demo.sh down

demo-local: deps
	hack/demo-local.sh up

demo-local-down:
	hack/demo-local.sh down

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

node:
	hack/build-controlplane.sh >/dev/null
	hack/build-node.sh
