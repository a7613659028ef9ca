// libFuzzer harness: read_npy (through an in-memory file).
// vitmsn::Error is the expected answer to bad input; anything else is a finding (see fuzz_targets.hpp).
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    vitmsn::fuzz::npy_input(data, size);
  } catch (const vitmsn::Error&) {
  }
  return 0;
}
