// libFuzzer harness: decode_image (at most 1024x1024 pixels) + the default Preprocessor.
// vitmsn::Error is the expected answer to bad input; anything else is a finding (see fuzz_targets.hpp).
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    vitmsn::fuzz::image_input(data, size);
  } catch (const vitmsn::Error&) {
  }
  return 0;
}
