# Thin wrapper over CMake. `make demo` and `make test` set up everything they
# need on a fresh Debian machine (scripts/setup.sh installs the packages).

BUILD ?= build
JOBS ?= 2
NPROC ?= 2
GENERATOR := $(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja")

.PHONY: all setup configure build demo linear-demo test bench install clean

all: build

setup:
	@bash scripts/setup.sh

configure: setup
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release; \
	fi

build: configure
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

# Collectives (latency, bus bandwidth) and layers (step time next to one
# unsharded process owning every core, parameter memory); tables + JSON in out/.
bench: build
	mkdir -p out
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_collectives --json out/bench_collectives.json
	./$(BUILD)/torchtp-run --nproc-per-node $(NPROC) ./$(BUILD)/bench/bench_layers --json out/bench_layers.json

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) out
