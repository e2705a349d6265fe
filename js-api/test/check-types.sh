#!/usr/bin/env bash
# Checks js-api/gateway.d.ts against js-api/gateway.js with the TypeScript
# compiler (tests/e2e's pinned typescript): tsc declares what gateway.js
# exports, then types-match.ts must compile against both.
#   check-types.sh [JS_API_DIR]   (default: this script's js-api)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
api="${1:-$here/..}"
tsc="$here/../../tests/e2e/node_modules/.bin/tsc"
common=(--skipLibCheck --strict --target es2022 --lib es2022,dom --module es2022 --moduleResolution bundler)
rm -rf "$api/test/inferred"
"$tsc" "${common[@]}" --allowJs --declaration --emitDeclarationOnly --outDir "$api/test/inferred" "$api/gateway.js"
"$tsc" "${common[@]}" --noEmit "$api/test/types-match.ts"
