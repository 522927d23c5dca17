# ztna — build, test, benchmark.
#
#   make test    vet + all unit, integration and browser tests with -race,
#                plus short fuzz runs; installs Chromium/redis-server if missing
#   make bench   the benchmarks whose figures the README reports
#   make lint    gofmt + go vet

GO       ?= go
PKGS     := ./...
FUZZTIME ?= 10s

# Every native fuzz target: package and function.
FUZZ_TARGETS := \
	./authn:FuzzValidateReturnURL \
	./authn:FuzzParseSessionID \
	./proxy:FuzzCanonicalPath \
	./proxy/identity:FuzzVerify \
	./proxy/identity:FuzzListenerHeader \
	./proxy/edge:FuzzRedirectHost \
	./proxy/edge:FuzzInboundProxyHeader \
	./internal/config:FuzzParse \
	./groups:FuzzDecide

.PHONY: all build test deps vet unit fuzz bench lint

all: build

build:
	$(GO) build -o bin/ztna ./cmd/ztna

deps:
	@.ci/deps

vet:
	$(GO) vet $(PKGS)

unit: deps
	CI=$${CI:-} $(GO) test -race -count=1 -timeout 15m $(PKGS)

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=3s $$pkg; \
	done

test: vet unit fuzz

bench: deps
	$(GO) test -run='^$$' -bench=. -benchmem ./groups ./proxy/identity
	$(GO) run ./integration/bench

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
