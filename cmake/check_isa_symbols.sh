#!/usr/bin/env bash
# Build check (ctest Build.IsaObjectsExportOnlyTheirTables): the object files compiled for one
# instruction set (src/cpu/kernels_avx2.cpp, kernels_avxvnni.cpp, kernels_avx512.cpp) define no
# symbol with external linkage but their table function and what lives in their own namespace
# (vitmsn::detail::avx2::, ::avxvnni::, ::avx512::). Anything else (an inline function or template of
# a header with external linkage, say) could be the copy the linker keeps for every caller, and run
# AVX-512 code on a CPU without it. Usage: check_isa_symbols.sh OBJECT...  (the library's objects; the
# ISA files among them are picked by name).
set -euo pipefail
checked=0 bad=0
for obj in "$@"; do
  case "$(basename "$obj")" in
    kernels_avx2.cpp.o | kernels_avxvnni.cpp.o | kernels_avx512.cpp.o) ;;
    *) continue ;;
  esac
  checked=$((checked + 1))
  # Defined symbols with external linkage (upper-case types; V/W: weak, u: unique global).
  while IFS= read -r line; do
    name="${line#* ? }"
    case "$name" in
      DW.ref.__gxx_personality_v0) ;;
      "vitmsn::detail::avx2_kernel_table()" | "vitmsn::detail::avx512_kernel_table()") ;;
      vitmsn::detail::avx2::* | vitmsn::detail::avxvnni::* | vitmsn::detail::avx512::*) ;;
      *)
        echo "error: $(basename "$obj") defines '$name' with external linkage (move it into an anonymous namespace or its ISA's namespace)"
        bad=$((bad + 1)) ;;
    esac
  done < <(nm -C --defined-only --extern-only "$obj" | grep -E '^[0-9a-f]* [A-Zu] ')
done
if [ "$checked" -eq 0 ]; then
  echo "error: no ISA object file among the arguments (kernels_avx2/avxvnni/avx512.cpp.o)"
  exit 1
fi
if [ "$bad" -gt 0 ]; then
  echo "$bad symbols with external linkage in ISA files"
  exit 1
fi
echo "ISA objects OK: $checked checked, only their tables and namespaces are external"
