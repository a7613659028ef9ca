#!/usr/bin/env bash
# Style.ClangFormat: clang-format --dry-run -Werror over the C++ sources of the tree (src, include, python,
# examples, tests; not tests/data). usage: clang_format_check.sh SOURCE_DIR [CLANG_FORMAT]
set -euo pipefail
cd "$1"
cf="${2:-clang-format}"
mapfile -t files < <(find src include examples tests python -path tests/data -prune -o -type f \( -name '*.cpp' -o -name '*.hpp' \) -print | sort)
"$cf" --dry-run -Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"
