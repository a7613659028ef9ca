#!/usr/bin/env bash
# Builds tests/consumer against vitmsn both ways and runs it on the tiny model:
#   1. cmake --install of the main build (nothing recompiled) into a temporary prefix, then
#      find_package(vitmsn)
#   2. add_subdirectory(<vitmsn source>)
# usage: check.sh SOURCE_DIR BUILD_DIR WORK_DIR CXX_COMPILER
# The consumer is built with the compiler of the main build: a static install carries that compiler's
# OpenMP runtime calls (libgomp for g++, libomp for clang), which find_package(OpenMP) in a consumer
# built with another compiler would not link.
set -euo pipefail
src="$1"; build="$2"; work="$3"; cxx="$4"
rm -rf "$work" && mkdir -p "$work"
model="$src/tests/data/models/tiny"; image="$src/tests/data/images/chelsea.png"

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/lib/cmake/vitmsn/vitmsnConfig.cmake" || test -f "$work/prefix/lib64/cmake/vitmsn/vitmsnConfig.cmake"
test -f "$work/prefix/include/vitmsn/vitmsn.hpp"

cmake -S "$src/tests/consumer" -B "$work/fp" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/fp.log"
cmake --build "$work/fp" -j2 >> "$work/fp.log"
out1=$("$work/fp/consumer" "$model" "$image")
echo "find_package:     $out1"

# add_subdirectory compiles vitmsn once more inside the consumer's tree: the cost of this test. What it
# proves (the target, its usage requirements, options off when not top-level, a working link) does
# not depend on optimisation, so that copy is built unoptimised and without debug info, which
# compiles in about two thirds of the time of a Release build.
cmake -S "$src/tests/consumer" -B "$work/sub" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 \
  -DVITMSN_CONSUMER_MODE=add_subdirectory -DVITMSN_SOURCE_DIR="$src" > "$work/sub.log"
cmake --build "$work/sub" -j2 >> "$work/sub.log"
out2=$("$work/sub/consumer" "$model" "$image")
echo "add_subdirectory: $out2"
# Neither consumer build may have built vitmsn's tests or programs.
if ls "$work/sub/vitmsn/tests" "$work/sub/vitmsn/examples" >/dev/null 2>&1; then
  echo "add_subdirectory built vitmsn's tests/programs: options must be off when not top-level" >&2; exit 1
fi
[ "$out1" = "$out2" ] || { echo "the two builds disagree" >&2; exit 1; }
echo "consumer OK"
