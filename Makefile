# meshgate — build, test and demo. Every target installs the Debian packages
# it needs when they are missing, so a fresh machine needs only Go and make.

SHELL      := /bin/bash
GO         ?= go
BIN        := bin/meshgate
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -X main.version=$(VERSION)
# Packages the tests and the demo drive for real: iptables/ip6tables, nft
# (the redirect tests read the nf_tables ruleset back with it),
# iproute2 (ip, bridge), curl as the HTTP client, socat as a plain TCP peer,
# tcpdump and tshark to capture and read what crosses the wire, openssl and
# sslscan as TLS clients of the sidecar, nghttp as an HTTP/2 client,
# MariaDB as a real server-first protocol, Redis and PostgreSQL with their
# benchmarks as real opaque protocols, dig as the DNS client, slowhttptest as
# the slow client (slowloris) the protection limits are tested against.
APT_PACKAGES := iptables nftables iproute2 curl socat procps ca-certificates tcpdump tshark openssl sslscan mariadb-server mariadb-client nghttp2-client redis-server redis-tools postgresql dnsutils slowhttptest
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
E2E_TIMEOUT ?= 30m

export PATH := $(PATH):/usr/local/go/bin

# The container image: podman builds it (runc runs its steps, catatonit is
# a pod's init, netavark its network), mmdebstrap builds the base image
# where no registry is reachable (scripts/base-image.sh).
PODMAN_PACKAGES := podman runc catatonit netavark aardvark-dns mmdebstrap
IMAGE      ?= meshgate:latest
BASE_IMAGE := docker.io/library/debian:bookworm-slim
# scripts/containers.conf: what podman 4.3 needs on these machines (runc,
# cgroupfs, file events); the e2e tests use it too.
export CONTAINERS_CONF ?= $(CURDIR)/scripts/containers.conf

# Go tools the e2e tests drive, installed into bin/tools from the module
# proxy at pinned versions: grpc-go's interop client and server, h2spec.
TOOLS_DIR  := $(CURDIR)/bin/tools
GRPC_VERSION   := v1.79.3
H2SPEC_VERSION := v2.2.1+incompatible
FORTIO_VERSION := v1.68.2

# Where make bench leaves its report.
BENCH_DIR  := bench-report

.PHONY: all build deps podman-deps image base-image tools k8s-assets vet unit e2e test demo bench bench-fortio golden clean

all: build

## deps: install missing Debian packages (apt-get update runs once, only if needed)
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## podman-deps: podman and what building and running the image needs
podman-deps:
	@missing=""; for p in $(PODMAN_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## base-image: the Dockerfile's base image, built from Debian packages
## when podman does not have it (no registry is needed)
base-image: podman-deps
	$(SUDO) env CONTAINERS_CONF=$(CONTAINERS_CONF) scripts/base-image.sh $(BASE_IMAGE)

## image: the meshgate image from the Dockerfile: the init container and
## the sidecar (IMAGE=name:tag to name it). Its build steps use the host's
## network, so podman sets up no network of its own on the host.
image: build base-image
	$(SUDO) env CONTAINERS_CONF=$(CONTAINERS_CONF) podman build --pull=never --network=host \
		--build-arg VERSION=$(VERSION) -t $(IMAGE) .

## tools: the Go tools of the e2e tests, in bin/tools (once)
tools: $(TOOLS_DIR)/server $(TOOLS_DIR)/client $(TOOLS_DIR)/h2spec

$(TOOLS_DIR)/server $(TOOLS_DIR)/client:
	GOBIN=$(TOOLS_DIR) GOFLAGS=-mod=mod $(GO) install google.golang.org/grpc/interop/server@$(GRPC_VERSION) google.golang.org/grpc/interop/client@$(GRPC_VERSION)

$(TOOLS_DIR)/h2spec:
	GOBIN=$(TOOLS_DIR) GOFLAGS=-mod=mod $(GO) install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)

## build: the meshgate binary in bin/, static (no cgo): it runs in any
## image, and a sidecar maps no libc (1.3 MB less resident memory each)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/meshgate

## vet: gofmt, and go vet on Linux and on macOS: people develop on macOS,
## where the *_other.go stubs stand in for the *_linux.go system calls
vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...

## unit: the tests that need no root (race detector on)
unit:
	$(GO) test -race -short -count=1 ./...

## k8s-assets: kube-apiserver, kube-controller-manager and etcd for the
## webhook e2e test, built from the Go module proxy into a cache outside
## the repo, once (minutes cold)
k8s-assets:
	@GO=$(GO) scripts/k8s-assets.sh

## e2e: everything, including real iptables in real network namespaces (root)
e2e: deps tools podman-deps base-image k8s-assets
	@if [ "$$(id -u)" != 0 ]; then echo "make e2e: needs root (network namespaces, iptables): run 'sudo make e2e'"; exit 1; fi
	KUBEBUILDER_ASSETS=$$(scripts/k8s-assets.sh --print-dir) MESHGATE_TOOLS=$(TOOLS_DIR) $(GO) test -count=1 -p 1 -timeout $(E2E_TIMEOUT) ./...

## test: the whole suite — vet, unit tests with -race, then the root tests and e2e
test: deps vet unit e2e

## golden: rewrite the redirect golden files after an intended rule change
golden:
	$(GO) test ./redirect -run Golden -update

## demo: a local mesh of namespace pods with real traffic and a report (root)
demo: deps build
	$(SUDO) ./$(BIN) demo

## bench: the standard comparison (fortio's method: fixed 1000 rps, 1 KiB, 16
## connections), direct vs a meshgate sidecar pair, 3 interleaved runs (root)
bench: deps build
	@mkdir -p $(BENCH_DIR)
	$(SUDO) ./$(BIN) bench mesh --rate 1000 --connections 16 --body 1024 --duration 30s --repetitions 3 \
		--json $(BENCH_DIR)/report.json --plot $(BENCH_DIR)/latency.svg | tee $(BENCH_DIR)/report.txt
	@echo "make bench: report in $(BENCH_DIR)/ (report.txt, report.json, latency.svg)"

## bench-fortio: meshgate bench and fortio on one loopback backend, same fixed
## rate, 3 times interleaved: their p50 and p99 should agree
bench-fortio: deps build $(TOOLS_DIR)/fortio
	scripts/bench-vs-fortio.sh ./$(BIN) $(TOOLS_DIR)/fortio

$(TOOLS_DIR)/fortio:
	GOBIN=$(TOOLS_DIR) GOFLAGS=-mod=mod $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

clean:
	rm -rf bin $(BENCH_DIR)
