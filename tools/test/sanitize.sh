#!/usr/bin/env bash
# `make sanitize`: the whole suite built with AddressSanitizer (leaks
# included) and UndefinedBehaviorSanitizer, in build-asan/. The services the
# tests start are the instrumented binaries too. Not part of `make test`
# (6-12 minutes on two cores, most of it building; the tests run at their
# usual speed). The image test is left out: it checks the binaries' libraries
# against the runtime image, which has no sanitizer runtimes.
set -euo pipefail
cd "$(dirname "$0")/../.."
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" >/dev/null
cmake --build build-asan -j2
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
# Every service a test leaves running is stopped with SIGTERM and must exit 0,
# so the sanitizers' checks at exit (leaks) run for each (tests/harness.h).
export CONNECTING_TEST_STOP_WITH_SIGTERM=1
BUILD_DIR=build-asan tools/test/run.sh -E image_runtime_libs "$@"
