# Kiln build and test entry points. `make demo` is the main job on a built-in
# default; `make test` is what CI runs (.ci/run).
GO      ?= go
FUZZTIME ?= 10s

.PHONY: all build kiln-arm64 demo peers peers-smoke peers-train peers-train-smoke train-smoke test vet fmt-check unit race fuzz install-deps clean

all: build

# bin/kiln, the compiler, and bin/kiln-runner, the runtime-only program that
# `kiln build` appends compiled networks to (it must sit next to bin/kiln, or
# be named by KILN_RUNNER). The runner is built with cgo (the runtime dlopens
# the kernels) and without symbol tables (-s -w: smaller built models; stack
# traces still work). bin/libkiln.so is the runtime as a C shared library
# (cmd/kiln-lib), which `kiln build --format lib` appends networks to; Go's
# generated header is removed (the C API is runtime/clib/kiln.h).
RUNNER_LDFLAGS ?= -s -w

build:
	$(GO) build -o bin/kiln ./cmd/kiln
	CGO_ENABLED=1 $(GO) build -ldflags='$(RUNNER_LDFLAGS)' -o bin/kiln-runner ./cmd/kiln-runner
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -ldflags='$(RUNNER_LDFLAGS)' -o bin/libkiln.so ./cmd/kiln-lib
	rm -f bin/libkiln.h

# The arm64 runner that `kiln build --target arm64-neon` appends networks to:
# it must sit next to bin/kiln. Cross-compiled with cgo with Debian's aarch64
# toolchain (make install-deps); see docs/ARM64.md. Not part of `build`,
# which needs no cross toolchain.
AARCH64_CC ?= aarch64-linux-gnu-gcc

kiln-arm64:
	@command -v $(AARCH64_CC) >/dev/null 2>&1 || { echo "$(AARCH64_CC) not found: run make install-deps (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"; exit 1; }
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=$(AARCH64_CC) $(GO) build -ldflags='$(RUNNER_LDFLAGS)' -o bin/kiln-runner-linux-arm64 ./cmd/kiln-runner

# Main job: Inception-v4 end to end on the built-in sample (procedural weights).
demo: build
	./bin/kiln demo inception_v4

# Kiln vs ONNX Runtime on the three networks: agreement and alternating
# timings, batch {1, 8} x threads {1, 2} (several minutes).
peers:
	bash bench/peers/run.sh

# The same harness on the tiny network (seconds): run by make test so the
# peers path (export, ORT, build, alternating timing) cannot rot.
peers-smoke:
	bash bench/peers/run.sh -nets tiny -batches 1 -threads 1

# The harness on every tests/corpus network (32x32) and on PyTorch-exported
# full-size ResNet-50 and MobileNet-v2 (bench/onnx/run.sh: exports them with
# python3-torch, then kiln import), batch {1, 8}, 2 threads.
.PHONY: peers-corpus peers-onnx
peers-corpus:
	bash bench/peers/run.sh -corpus -size 32 -batches 1,8 -threads 2
peers-onnx:
	bash bench/onnx/run.sh

# Issue 12's GPU check: gpu-bundle prepares here (Go, LLVM) what
# scripts/gpu-check.sh needs on a GPU machine without them: the runner, kiln
# (to regenerate weights there), GPU programs for every network, precision
# and batch, the fixture inputs and the CPU backend's outputs, packed into
# out/gpu-bundle.tar.gz (scripts/gpu-bundle.sh; about 10 minutes).
# gpu-check runs the check on this machine's GPU.
.PHONY: gpu-bundle gpu-check
gpu-bundle: build
	bash scripts/gpu-bundle.sh
gpu-check:
	bash out/gpu-bundle/gpu-check.sh

# Training throughput, Kiln's kiln train vs PyTorch 1.13 (Debian's
# python3-torch) on the two mini networks, same recipe, batch 128, 2 threads,
# alternating rounds with img/s and the ratio (bench/train/run.sh; minutes).
peers-train: build
	bash bench/train/run.sh

# The same harness in seconds: the PyTorch networks checked against the
# training fixtures, then one round of 2 steps at batch 8 (no speed claim).
peers-train-smoke: build
	bash bench/train/run.sh -smoke

# Issue 9: Inception-v4's training step at batch 16, 299x299, 2 threads,
# Kiln's compiled step (bench/train/kilnstep) vs PyTorch (timm's module tree
# in bench/train/torch_inception_v4.py), alternating rounds: img/s, the
# ratio, Kiln's arena and both peak RSS (about 6 GiB; a cold object cache
# adds many minutes to the first round).
.PHONY: peers-train-inception
peers-train-inception:
	GO=$(GO) bash bench/train/run.sh -nets inception_v4 -batch 16 -steps 3 -warmup 2 -rounds 2

# Issue 14's scaling benchmark (docs/DISTRIBUTED.md): dist's all-reduce
# throughput against Open MPI's own (4 KB to 171 MB, 2 ranks), the all-reduce
# of Inception-v4's 171 MB of gradients with 1, 2 and 4 MPI ranks on this
# machine and its overlap with computation, and the compiled data-parallel
# step of the mini nets (8 images per rank) and Inception-v4 (2 per rank)
# split into compute, exposed wait and update (bench/dist/run.sh; tens of
# minutes, about 4 GiB per Inception-v4 rank). bench-dist-smoke is the same
# with 1 M floats, 1-2 ranks and mini_inception at batch 2 (about a minute on
# a loaded machine with a warm object cache; make test runs it).
.PHONY: bench-dist bench-dist-smoke
bench-dist: build
	bash bench/dist/run.sh
bench-dist-smoke: build
	bash bench/dist/run.sh -smoke

# Issue 9: one compiled training step of Inception-v4 and
# Inception-ResNet-v2 at batch 2, 299x299, against the interpreter's and a
# PyTorch float64 step (tests/train_full_ref.py, python3-torch; the rule is
# in tests/train_full_test.go; about 6 GiB and many minutes with a cold
# object cache). make test runs the small variant (Inception-ResNet-v1,
# 107x107).
.PHONY: train-full-check
train-full-check:
	KILN_TRAIN_FULL=1 $(GO) test -count=1 -timeout 120m -v -run '^TestFullNetworkTrainStepCompiled$$' ./tests/

# kiln train end to end on real Fashion-MNIST (make install-deps installs
# it): one tiny epoch of the residual mini network in the interpreter, then a
# second from its checkpoint with --resume (seconds).
train-smoke: build
	rm -rf bin/train-smoke
	./bin/kiln train mini_inception_resnet --data fashion-mnist --batch 8 --limit-train 32 --limit-test 16 --epochs 1 --out bin/train-smoke
	./bin/kiln train mini_inception_resnet --resume bin/train-smoke --epochs 2
	cat bin/train-smoke/metrics.csv

# unit runs last so that CI's log ends with its "N passed, M failed, K skipped".
test: fmt-check vet race fuzz peers-smoke train-smoke peers-train-smoke bench-dist-smoke unit

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# go test -json through internal/cmd/testsummary: it echoes package results
# and the output of failed tests, prints per-package counts and a final
# "N passed, M failed, K skipped" line, and under KILN_REQUIRE_TOOLS=1 (CI)
# fails on any skip not for -short. Events are kept in bin/unit-tests.json.
unit:
	@mkdir -p bin
	$(GO) run ./internal/cmd/testsummary -json bin/unit-tests.json -- $(GO) test -json -count=1 -timeout 40m ./...

# Concurrent inference from many goroutines, and dist's in-process ranks,
# under the race detector.
race:
	$(GO) test -count=1 -race ./runtime/ ./runtime/cuda/
	$(GO) test -count=1 -race -run 'TestLoopback' ./dist/

# Every parser gets a short fuzz run: no panic, no hang. scripts/fuzz-one.sh
# reruns once a run that Go's fuzz coordinator ended with a spurious
# "context deadline exceeded" and no failing input (go.dev/issue/75804).
fuzz:
	GO=$(GO) bash scripts/fuzz-one.sh ir FuzzParse $(FUZZTIME)
	GO=$(GO) bash scripts/fuzz-one.sh dsl FuzzParse $(FUZZTIME)
	GO=$(GO) bash scripts/fuzz-one.sh ir/tensor FuzzReadNPY $(FUZZTIME)
	GO=$(GO) bash scripts/fuzz-one.sh ir/tensor FuzzReadSafetensors $(FUZZTIME)
	GO=$(GO) bash scripts/fuzz-one.sh codegen/onnx FuzzReadONNX $(FUZZTIME)

# System packages: LLVM 19 for code generation, qemu for arm64 tests.
install-deps:
	bash .ci/install-deps

clean:
	rm -rf bin
