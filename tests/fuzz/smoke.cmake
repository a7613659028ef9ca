# Fuzz smoke test (label `fuzz`, part of the default run): tests/fuzz/smoke.sh has run_fuzzers.sh build
# the libFuzzer harnesses with clang (ASan + UBSan) in <build>/fuzz-smoke and run each target for 5 s
# (the script's shortest run) on its seeds, with no corpus or findings kept from earlier runs; it fails
# when a harness does not build or an input crashes. About 2.5 minutes on 2 cores from a clean build
# folder (the library's sanitized build), 35 s after that. Included from tests/CMakeLists.txt; defined
# only when a clang++ compiles and links -fsanitize=fuzzer (else a warning says how to get one).
find_program(VITMSN_FUZZ_CLANGXX NAMES clang++ clang++-14 DOC "clang++ for the fuzz smoke test")
if(VITMSN_FUZZ_CLANGXX AND NOT DEFINED VITMSN_FUZZ_CLANGXX_WORKS)
  set(_dir ${CMAKE_CURRENT_BINARY_DIR}/fuzz-probe)
  file(WRITE ${_dir}/probe.cpp
    "#include <cstddef>\n#include <cstdint>\n"
    "extern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n")
  execute_process(COMMAND ${VITMSN_FUZZ_CLANGXX} -fsanitize=fuzzer,address,undefined ${_dir}/probe.cpp
                          -o ${_dir}/probe
    RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    set(VITMSN_FUZZ_CLANGXX_WORKS ON CACHE INTERNAL "")
  else()
    set(VITMSN_FUZZ_CLANGXX_WORKS OFF CACHE INTERNAL "")
  endif()
endif()
if(VITMSN_FUZZ_CLANGXX AND VITMSN_FUZZ_CLANGXX_WORKS)
  add_test(NAME Fuzz.SmokeBuildsHarnessesAndRunsSeeds
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/smoke.sh ${PROJECT_BINARY_DIR}/fuzz-smoke ${VITMSN_FUZZ_CLANGXX} 5)
  set_tests_properties(Fuzz.SmokeBuildsHarnessesAndRunsSeeds PROPERTIES
    LABELS fuzz TIMEOUT 1200
    COST 1100)  # a build of the library with clang: started first, so that it overlaps the unit tests
else()
  message(WARNING "clang++ with -fsanitize=fuzzer not found: the fuzz smoke test (Fuzz.SmokeBuildsHarnessesAndRunsSeeds) "
                 "is not defined; apt-get install clang (bash .ci/install-deps)")
endif()
