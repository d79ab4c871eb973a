#!/usr/bin/env bash
# Browser-test dependencies, called by .ci/run: Debian's chromium (never a browser download) and playwright-core.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
  else
    echo "== no /usr/bin/chromium and not root: the browser test will skip"; exit 0
  fi
fi
if ! command -v npm > /dev/null; then
  echo "== npm is missing (apt-get install -y nodejs npm): the browser test will skip"; exit 0
fi
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
echo "== browser test ready: $(/usr/bin/chromium --version 2> /dev/null), playwright-core $(node -p 'require("playwright-core/package.json").version')"
