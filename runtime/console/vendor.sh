#!/usr/bin/env bash
# Re-vendor the console's third-party assets at their pinned versions (make console-assets).
# Each comes from the npm registry with `npm pack` (the package's own tarball, no install
# scripts run); only the minified dist files and their licence files are kept.
set -euo pipefail
PICO=2.1.1            # @picocss/pico: classless-friendly CSS for semantic HTML
SWAGGER_UI=5.35.0     # swagger-ui-dist: renders /openapi.json at /docs

out="$(cd "$(dirname "$0")" && pwd)/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@picocss/pico@$PICO" "swagger-ui-dist@$SWAGGER_UI" >/dev/null
mkdir pico swagger
tar xzf "picocss-pico-$PICO.tgz" -C pico --strip-components=1
tar xzf "swagger-ui-dist-$SWAGGER_UI.tgz" -C swagger --strip-components=1

rm -rf "$out" && mkdir -p "$out"
cp pico/css/pico.min.css "$out/pico.min.css"
cp pico/LICENSE.md "$out/pico.LICENSE.md"
cp swagger/swagger-ui-bundle.js swagger/swagger-ui.css "$out/"
sed -i '/^\/\/# sourceMappingURL=/d; s#/\*\# sourceMappingURL=[^*]*\*/##' \
    "$out/swagger-ui-bundle.js" "$out/swagger-ui.css"   # the maps are not vendored
cp swagger/LICENSE "$out/swagger-ui.LICENSE"
cp swagger/NOTICE "$out/swagger-ui.NOTICE"
cp swagger/swagger-ui-bundle.js.LICENSE.txt "$out/swagger-ui-bundle.js.LICENSE.txt"
cat > "$out/VERSIONS" <<VERSIONS
@picocss/pico $PICO (MIT)
swagger-ui-dist $SWAGGER_UI (Apache-2.0)
VERSIONS
ls -l "$out"
