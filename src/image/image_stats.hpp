#pragma once
// A process-wide count of pixel buffers, for tests that must show an input was refused from its
// header alone (before any pixel buffer exists) without timing anything.
#include <cstdint>

namespace vitmsn::detail {

/// How many pixel buffers the image decoders have allocated in this process (stb_image's decode
/// buffer, libjpeg-turbo's, the RGB image each decoder returns). Thread-safe.
std::uint64_t pixel_buffers_allocated();

}  // namespace vitmsn::detail
