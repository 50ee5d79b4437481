# Kiln build and test entry points. `make demo` is the main job on a built-in
# default; `make test` is what CI runs (.ci/run).
GO      ?= go
FUZZTIME ?= 10s

.PHONY: all build demo test vet fmt-check unit fuzz install-deps clean

all: build

build:
	$(GO) build -o bin/kiln ./cmd/kiln

# Main job: Inception-v4 end to end on the built-in sample (procedural weights).
demo: build
	./bin/kiln demo inception_v4

test: fmt-check vet unit fuzz

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 40m ./...

# Every parser gets a short fuzz run: no panic, no hang.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./ir/
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./dsl/
	$(GO) test -run='^$$' -fuzz='^FuzzReadNPY$$' -fuzztime=$(FUZZTIME) ./ir/tensor/
	$(GO) test -run='^$$' -fuzz='^FuzzReadSafetensors$$' -fuzztime=$(FUZZTIME) ./ir/tensor/

# System packages: LLVM 19 for code generation, qemu for arm64 tests.
install-deps:
	bash .ci/install-deps

clean:
	rm -rf bin
