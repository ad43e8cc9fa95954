# Thin wrapper over CMake. `make demo` and `make test` set up everything they
# need on a fresh Debian machine (scripts/setup.sh installs the packages).

BUILD ?= build
JOBS ?= 2
NPROC ?= 2
GENERATOR := $(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja")

.PHONY: all setup configure build bench-build demo linear-demo test bench sanitize install clean

all: build

setup:
	@bash scripts/setup.sh

configure: setup
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release; \
	fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The benchmarks are built only when asked: the tests do not need them.
bench-build: configure
	cmake -S . -B $(BUILD) -DTORCHTP_BUILD_BENCHMARKS=ON > /dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The main job on local ranks over loopback: no cluster needed. Trains the
# GPT at TP=1 and TP=2 and draws both loss curves into out/demo/loss.png.
STEPS ?= 300
demo: build
	bash scripts/demo.sh $(BUILD) $(STEPS)

# The two layers next to the unsharded layer, on NPROC local ranks.
linear-demo: build
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/examples/linear_demo

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Collectives per communicator next to memcpy (and a PNG of bus bandwidth),
# the MLP from latency- to compute-bound and every layer and block next to
# the unsharded module, the main job's tokens/s, decoding latency (float32,
# bfloat16, int8), the weight products on every kernel path,
# tokenizer encode MB/s next to Hugging Face's Rust library, the
# memory of building the GPT and of training it at TP=1, 2 and 4 with and
# without sequence parallelism and recomputation (one process per mode:
# memory a mode freed would otherwise stay in the allocator and blur the
# next one's peak); tables + JSON in out/.
bench: bench-build
	mkdir -p out
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_collectives --json out/bench_collectives.json --csv out/bench_collectives.csv
	bash bench/plot_busbw.sh out/bench_collectives.csv out/busbw.png all_reduce float32 "all_reduce float32, $(NPROC) ranks"
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_layers --cases ParallelMLP --shapes 128x8,1024x64,1024x512,4096x64 --json out/bench_mlp.json
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_layers --json out/bench_layers.json
	bash bench/train_throughput.sh $(BUILD) 5 40 out/train_throughput.json
	./$(BUILD)/torchtp-run --nproc-per-node 1 ./$(BUILD)/bench/bench_generate --json out/bench_generate_tp1.json
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_generate --json out/bench_generate_tp$(NPROC).json
	./$(BUILD)/torchtp-run --nproc-per-node 1 ./$(BUILD)/bench/bench_weights --json out/bench_weights.json
	./$(BUILD)/bench/bench_tokenizer --json out/bench_tokenizer.json
	bash bench/serve.sh $(BUILD) out gpt2 1,4,16,64 1 $(NPROC)
	./$(BUILD)/torchtp-run --nproc-per-node 1 ./$(BUILD)/bench/bench_init --json out/bench_init_tp1.json
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_init --json out/bench_init_tp$(NPROC).json
	for n in 1 2 4; do for m in plain sp recompute sp+recompute; do \
	  if [ $$n = 1 ] && [ $$m != plain ] && [ $$m != recompute ]; then continue; fi; \
	  base=; if [ $$n$$m != 1plain ]; then base="--baseline out/bench_memory_tp1_plain.json"; fi; \
	  ./$(BUILD)/torchtp-run --nproc-per-node $$n ./$(BUILD)/bench/bench_memory --modes $$m $$base \
	    --json out/bench_memory_tp$${n}_$$m.json || exit 1; \
	done; done

# Under ThreadSanitizer the communicator tests; under AddressSanitizer +
# UndefinedBehaviorSanitizer also the group, mapping, layer, block and fuzz
# tests at 2 ranks on both communicators, and the chat-template engine
# (label `sanitize`, which TORCHTP_SANITIZE fills per build). Each in its own build directory, with
# only the binaries its tests run. libtorch itself is not instrumented:
# tests/sanitizers/tsan.supp says what that hides; leak checks are off
# (libtorch's registries are never freed); a UBSan finding aborts the test.
SANITIZE_TARGETS_thread := torchtp-run test_group test_failures
SANITIZE_TARGETS_address := torchtp-run test_group test_failures test_mappings \
  test_linear test_blocks test_llama test_fuzz test_weight_formats test_engine \
  test_chat_template
sanitize: setup
	for s in thread address; do \
	  targets="$(SANITIZE_TARGETS_thread)"; \
	  if [ $$s = address ]; then targets="$(SANITIZE_TARGETS_address)"; fi; \
	  cmake -S . -B $(BUILD)-$$s $(GENERATOR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DTORCHTP_SANITIZE=$$s -DTORCHTP_BUILD_EXAMPLES=OFF -DTORCHTP_BUILD_BENCHMARKS=OFF && \
	  cmake --build $(BUILD)-$$s -j $(JOBS) --target $$targets && \
	  (cd $(BUILD)-$$s && TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/sanitizers/tsan.supp" \
	    ASAN_OPTIONS="detect_leaks=0" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
	    ctest -L sanitize --output-on-failure -j $(JOBS)) || exit 1; \
	done

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD)-thread $(BUILD)-address out
