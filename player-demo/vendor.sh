#!/bin/sh
# Refresh the vendored front-end libraries from npm (pinned in package.json). tidecast embeds
# vendor/ at build time, so nothing is fetched at run time and no CDN is linked.
set -eu
cd "$(dirname "$0")"
npm install --no-audit --no-fund
mkdir -p vendor
cp node_modules/hls.js/dist/hls.min.js vendor/hls.min.js
cp node_modules/hls.js/LICENSE vendor/hls.js.LICENSE
echo "vendored hls.js $(node -p "require('./node_modules/hls.js/package.json').version")"
cp node_modules/dashjs/dist/modern/umd/dash.all.min.js vendor/dash.all.min.js
cp node_modules/dashjs/LICENSE.md vendor/dash.js.LICENSE
echo "vendored dash.js $(node -p "require('./node_modules/dashjs/package.json').version")"
