# ztna — build, test, benchmark.
#
#   make test    vet + all unit, integration and browser tests with -race,
#                plus short fuzz runs; installs Chromium/redis-server if missing
#   make bench   the benchmarks whose figures the README reports
#   make lint    gofmt + go vet

GO       ?= go
PKGS     := ./...

# Every native fuzz target: package, function and how many inputs to try.
# Counts, not durations: a duration -fuzztime can fail spuriously with
# "context deadline exceeded" at its end (golang/go#75804, unfixed in Go
# 1.26). Each count is about 10 s of fuzzing on this project's 2-core
# machines; FUZZSCALE multiplies them (e.g. FUZZSCALE=10 for a longer run).
FUZZSCALE ?= 1
FUZZ_TARGETS := \
	./authn:FuzzValidateReturnURL:150000 \
	./authn:FuzzParseSessionID:100000 \
	./proxy:FuzzCanonicalPath:80000 \
	./proxy/identity:FuzzVerify:80000 \
	./proxy/identity:FuzzListenerHeader:50000 \
	./proxy/edge:FuzzRedirectHost:80000 \
	./proxy/tunnel:FuzzReadHeader:50000 \
	./proxy/tunnel:FuzzReadFrame:30000 \
	./proxy/edge:FuzzInboundProxyHeader:25000 \
	./internal/config:FuzzParse:100000 \
	./groups:FuzzDecide:50000 \
	./groups:FuzzParseExpr:50000 \
	./groups:FuzzPathPattern:80000 \
	./groups:FuzzCompilePolicy:20000 \
	./posture:FuzzParseReport:80000 \
	./posture:FuzzDeviceFromCert:30000 \
	./internal/usercode:FuzzNormalize:80000 \
	./posture:FuzzParseFalco:50000 \
	./posture:FuzzParseSignal:50000 \
	./posture:FuzzNonceValid:80000 \
	./internal/bus:FuzzDecode:50000 \
	./web/console:FuzzConsoleForms:50000 \
	./internal/audit:FuzzContainsFold:50000

.PHONY: all build test deps vet unit fuzz bench lint

all: build

build:
	$(GO) build -o bin/ztna ./cmd/ztna

deps:
	@.ci/deps

vet:
	@bad=$$(gofmt -l .); if [ -n "$$bad" ]; then echo "not gofmt-formatted:"; echo "$$bad"; exit 1; fi
	$(GO) vet $(PKGS)

unit: deps
	CI=$${CI:-} $(GO) test -race -count=1 -timeout 15m $(PKGS)

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; fn=$${rest%%:*}; n=$$(( $${rest#*:} * $(FUZZSCALE) )); \
		echo "fuzz $$pkg $$fn ($$n inputs)"; \
		$(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$${n}x -fuzzminimizetime=3s $$pkg; \
	done

test: vet unit fuzz

bench: deps
	$(GO) test -run='^$$' -bench='BenchmarkAuthorize|BenchmarkNaiveCasbin' -cpu 1 -benchtime 1x ./groups
	$(GO) test -run='^$$' -bench='BenchmarkExprEval' -benchmem ./groups
	$(GO) test -run='^$$' -bench=. -benchmem ./proxy/identity ./posture
	$(GO) test -run='^$$' -bench=PostureStep -benchmem ./proxy
	$(GO) test -run='^$$' -bench='BenchmarkSessionLookup' -benchmem ./authn
	$(GO) test -run='^$$' -bench='BenchmarkRevocationFanout' -benchtime 1x ./integration
	$(GO) run ./integration/bench

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
