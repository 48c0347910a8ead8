#!/usr/bin/env bash
# `make sanitize`: the whole suite built with AddressSanitizer (leaks
# included) and UndefinedBehaviorSanitizer, in build-asan/. The services the
# tests start are the instrumented binaries too. Not part of `make test`
# (6-12 minutes on two cores, most of it building; the tests run at their
# usual speed). The image test is left out: it checks the binaries' libraries
# against the runtime image, which has no sanitizer runtimes.
set -euo pipefail
cd "$(dirname "$0")/../.."
sanitizers="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# -O1 -g1 (line tables: reports still name each frame's file and line)
# compiles in about 60% of the time -O2 -g takes, which on two cores is most
# of this target's run.
flags="-O1 -g1 -DNDEBUG $sanitizers"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$sanitizers" -DCMAKE_SHARED_LINKER_FLAGS="$sanitizers" >/dev/null
cmake --build build-asan -j2
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
# Every service a test leaves running is stopped with SIGTERM and must exit 0,
# so the sanitizers' checks at exit (leaks) run for each (tests/harness.h).
export CONNECTING_TEST_STOP_WITH_SIGTERM=1
BUILD_DIR=build-asan tools/test/run.sh -E image_runtime_libs "$@"
