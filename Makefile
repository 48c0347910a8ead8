# Connecting: the two commands a newcomer needs are `make up` and `make test`.
BUILD ?= build
JOBS ?= 2
BUILD_TYPE ?= RelWithDebInfo

.PHONY: all deps build lint breaking test sanitize up down reset bench demo token clean image-check

all: build

deps:  ## install missing Debian and npm packages (quick no-op when present)
	@tools/dev/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

lint: deps  ## buf lint, and buf breaking against the last release tag if there is one
	@node_modules/.bin/buf lint protos
	@tools/dev/buf-breaking.sh

test: build lint  ## build, lint, and run every test against throwaway PostgreSQL + NATS
	@tools/test/run.sh

sanitize: deps  ## the tests built with AddressSanitizer and UBSan, in build-asan/ (6-12 min; not part of test, CI runs it after test)
	@tools/test/sanitize.sh

up: build  ## run the suite locally with demo data (keeps data in .stack/ between runs)
	@tools/dev/up.sh

down:  ## stop what `make up` started
	@tools/dev/down.sh

reset:  ## stop what `make up` started and delete its data (demo data comes back at the next make up)
	@tools/dev/down.sh --reset

token:  ## print a token for the local stack: make token ROLE=admin [ORG=<id>]
	@tools/dev/token.sh $(or $(ROLE),admin) $(ORG)

bench: build  ## benchmarks on their own throwaway stack (bounded in time)
	@tools/bench/run.sh

image-check:  ## build the service images (podman, debootstrapped base) and run them against a throwaway stack (root; ~4 min per service)
	@tools/dev/image-check.sh $(SERVICES)

clean:
	rm -rf $(BUILD)
