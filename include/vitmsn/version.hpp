#pragma once
/// \file
/// Library version: the one place it is written (CMakeLists.txt reads it from here).

namespace vitmsn {
constexpr int kVersionMajor = 0;
constexpr int kVersionMinor = 2;
constexpr int kVersionPatch = 0;
constexpr const char* kVersionString = "0.2.0";
}  // namespace vitmsn
