#pragma once
/// \file
/// VITMSN_API: what a shared libvitmsn exports. The library is compiled with every symbol hidden
/// (-fvisibility=hidden -fvisibility-inlines-hidden); the public classes and functions of
/// include/vitmsn/ are marked VITMSN_API and are the only symbols a shared build exports.
///
/// - GCC and Clang (ELF, Mach-O): default visibility, in a static build as in a shared one. The
///   objects are the same either way (a static build's layers are what the shared library is linked
///   from), and a program that links the static library sees no difference. A project that links
///   static vitmsn into a shared library of its own and does not want vitmsn's API exported from it
///   links with -Wl,--exclude-libs,ALL.
/// - Windows DLLs: dllexport while building vitmsn (VITMSN_BUILDING, set by CMake), dllimport for its
///   users; nothing in a static build (VITMSN_STATIC, which CMake passes on to users of the static
///   library).
///
/// Handwritten (not CMake's GenerateExportHeader) so that the installed headers need no configured
/// file.

#if defined(_WIN32) || defined(__CYGWIN__)
#if defined(VITMSN_STATIC)
#define VITMSN_API
#elif defined(VITMSN_BUILDING)
#define VITMSN_API __declspec(dllexport)
#else
#define VITMSN_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define VITMSN_API __attribute__((visibility("default")))
#else
#define VITMSN_API
#endif
