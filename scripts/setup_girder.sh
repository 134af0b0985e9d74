#!/usr/bin/env bash
# Girder side of the set-up, called by scripts/setup.sh (or alone, after it). Idempotent.
#
# Installs:
#   apt:  redis-server (celery broker of the dev/test stack), chromium (headless browser test),
#         libcairo2-dev libpango1.0-dev libjpeg-dev libgif-dev librsvg2-dev libpixman-1-dev
#         (native npm modules of the HistomicsUI client build), nodejs npm (only if no `node`)
#   pip:  the ".[devstack]" extra into ./.venv: mongomock==4.3.0, redis, playwright (the Python
#         driver only: no browser is downloaded; the test drives /usr/bin/chromium)
#   the HistomicsUI web client with our client/ extension: `girder build` (about 5 min on
#   2 cores), skipped when the built bundle is newer than client/ (FORCE_GIRDER_BUILD=1 forces)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server chromium libcairo2-dev libpango1.0-dev libjpeg-dev libgif-dev
              librsvg2-dev libpixman-1-dev)
command -v node >/dev/null || APT_PACKAGES+=(nodejs npm)

echo "== girder: apt packages"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
else
  echo "not root or no apt-get: install ${APT_PACKAGES[*]} yourself" >&2
fi

echo "== girder: python extra [devstack]"
.venv/bin/python -m pip install -q -e '.[devstack]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import mongomock, redis, playwright, girder_nucleus_analysis"

echo "== girder: web client (girder build)"
# Girder 3.2.18's `girder build` installs its own client with `npm install --install-links`, so
# @girder/core lands under node_modules/ and its webpack rule (`exclude: /node_modules/`) skips
# Babel for it: core then exports getter-only ES bindings and large_image's
# `rest.restRequest = ...` throws in the browser ("Cannot set property restRequest of
# #<Object> which has only a getter"), which breaks large_image, HistomicsUI and us. Let Babel
# compile @girder/core again (idempotent edit of the installed build config).
WEBPACK_CONFIG=$(.venv/bin/python -c 'import girder, os; print(os.path.join(os.path.dirname(girder.__file__), "web_client", "grunt_tasks", "webpack.config.js"))')
if grep -q "exclude: /node_modules/$" "$WEBPACK_CONFIG"; then
  sed -i 's#exclude: /node_modules/$#exclude: /node_modules[\\/](?!@girder[\\/]core[\\/])/  // babel @girder/core (scripts/setup_girder.sh)#' "$WEBPACK_CONFIG"
  FORCE_GIRDER_BUILD=1
fi
BUNDLE=".venv/share/girder/static/built/plugins/nucleus_analysis/plugin.min.js"
newer=""
if [ -f "$BUNDLE" ]; then
  newer=$(find client -newer "$BUNDLE" -type f | head -1)
fi
if [ -n "${FORCE_GIRDER_BUILD:-}" ] || [ ! -f "$BUNDLE" ] || [ -n "$newer" ]; then
  # `girder build` = generate package.json, `npm install --install-links`, webpack. We run the
  # first two ourselves to add one npm override: backbone.localstorage (a HistomicsUI
  # dependency) pins backbone 1.3.3, npm then nests a second Backbone under
  # @girder/histomicsui, HistomicsUI's bundle gets its own copy, its router never starts and
  # /histomics never opens an image. One Backbone for everyone (the one @girder/core wants).
  STAGING=$(.venv/bin/python - <<'PY'
import json, os
from girder.cli import build
staging = build._GIRDER_BUILD_ASSETS_PATH
build._generatePackageJSON(staging, os.path.join(staging, "package.json.template"),
                           build._collectPluginDependencies())
path = os.path.join(staging, "package.json")
with open(path) as f:
    package = json.load(f)
package["overrides"] = {"backbone": "^1.4.0"}
with open(path, "w") as f:
    json.dump(package, f, indent=2)
print(staging)
PY
)
  rm -rf "$STAGING/package-lock.json" "$STAGING/node_modules"
  (cd "$STAGING" && npm install --install-links --no-audit --no-fund)
  if [ -n "$(find "$STAGING/node_modules" -path '*/node_modules/backbone/package.json' -not -path "$STAGING/node_modules/backbone/*")" ]; then
    echo "a second Backbone is installed under $STAGING/node_modules" >&2
    exit 1
  fi
  NODE_OPTIONS=--openssl-legacy-provider .venv/bin/girder build --no-reinstall
  test -f "$BUNDLE"
else
  echo "web client up to date ($BUNDLE)"
fi
