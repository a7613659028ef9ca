#!/usr/bin/env bash
# Packaging check (ctest Package.SharedLibraryExportsOnlyThePublicApi): a shared libvitmsn exports the
# public API and nothing else. The library is compiled with hidden visibility (CXX_VISIBILITY_PRESET
# hidden, VISIBILITY_INLINES_HIDDEN) and include/vitmsn/ marks its classes and functions VITMSN_API
# (include/vitmsn/export.hpp); this reads the dynamic symbol table of a shared library linked from
# the library's objects (libvitmsn.so in a shared build; in a static build the same objects linked as
# vitmsn_shared_check) and fails on any defined symbol
#   - in a namespace detail (vitmsn::detail::, vitmsn::cli::detail::, ...): internals, or
#   - outside namespace vitmsn,
# except what the C++ toolchain puts there itself:
#   - _init, _fini, _edata, _end, __bss_start: the ELF start/end markers of every shared object;
#   - weak (W, V) or unique (u) instances of std:: and __gnu_cxx:: templates (std::vector<float>::
#     _M_realloc_insert, std::__detail::_Map_base<...>::operator[], ...): libstdc++ declares its
#     namespaces with default visibility, so the instances the library's code needs are emitted as
#     weak default-visibility symbols whatever -fvisibility says; every program using the same
#     instance shares one copy. A strong (T, D, B) std:: symbol, or an instance over a
#     vitmsn::detail type, would be ours, and is refused;
#   - the compiler's weak RTTI of built-in compound types (typeinfo name for void (*)(void*)).
# It also checks that the public API is there (a few entry points of every layer), so that a build in
# which VITMSN_API exports nothing fails too.
#
# usage: check_exported_symbols.sh SHARED_LIBRARY [NM]
set -euo pipefail
lib=$1
nm=${2:-nm}
[ -f "$lib" ] || { echo "error: $lib does not exist"; exit 1; }

symbols=$("$nm" -DC --defined-only "$lib")
total=0 public=0 toolchain=0 bad=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  total=$((total + 1))
  type=$(awk '{print $2}' <<<"$line")
  name="${line#* ? }"
  # The entity a symbol is about: "typeinfo for vitmsn::Error" is about vitmsn::Error.
  entity="$name"
  for prefix in "typeinfo for " "typeinfo name for " "vtable for " "VTT for " "construction vtable for " \
    "guard variable for " "non-virtual thunk to " "virtual thunk to "; do
    entity="${entity#"$prefix"}"
  done
  case "$entity" in
    _init | _fini | _edata | _end | __bss_start)
      toolchain=$((toolchain + 1))
      continue ;;
  esac
  # The qualified name, without the return type of a template instance and the parameter list.
  qualified="${entity%%(*}"
  case "$qualified" in
    std::* | __gnu_cxx::* | *" std::"* | *" __gnu_cxx::"*)
      # libstdc++'s own std::__detail is the runtime's; an instance over a vitmsn::detail type is ours.
      if [[ "$type" == [WVu] && "$entity" != *"vitmsn::detail::"* ]]; then
        toolchain=$((toolchain + 1))
      else
        echo "error: exported from namespace std, not a weak template instance of the runtime: $name"
        bad=$((bad + 1))
      fi ;;
    *"detail::"*)
      echo "error: exported from namespace detail: $name"
      bad=$((bad + 1)) ;;
    vitmsn::* | *" vitmsn::"*)
      public=$((public + 1)) ;;
    *)
      # The compiler's weak RTTI of built-in compound types ("typeinfo name for void (*)(void*)").
      if [[ "$type" == [WVu] && "$entity" != *"::"* && "$name" == typeinfo* ]]; then
        toolchain=$((toolchain + 1))
      else
        echo "error: exported from outside namespace vitmsn: $name"
        bad=$((bad + 1))
      fi ;;
  esac
done <<<"$symbols"

# The public API must be exported: an entry point of each layer and the exception type.
missing=0
for want in "vitmsn::Model::load(" "vitmsn::Model::extract_features(" "typeinfo for vitmsn::Error" \
  "vitmsn::read_image(" "vitmsn::Preprocessor::operator()(" "vitmsn::SafetensorsFile::open(" \
  "vitmsn::convert_checkpoint(" "vitmsn::read_torch_checkpoint(" "vitmsn::backbone_identity(" \
  "vitmsn::write_npy(" "vitmsn::train_probe(" "vitmsn::kernel_isa"; do
  if ! grep -qF -- "$want" <<<"$symbols"; then
    echo "error: the public API is not exported: no $want...  in $lib"
    missing=$((missing + 1))
  fi
done

echo "$total exported symbols: $public in namespace vitmsn, $toolchain of the toolchain (ELF markers, weak std:: template instances)"
if [ "$bad" -gt 0 ] || [ "$missing" -gt 0 ]; then
  echo "$bad symbols exported that are not public API, $missing public entry points missing"
  exit 1
fi
echo "exported symbols OK: only the public API"
