#!/usr/bin/env bash
# Debian's Chromium for the browser tests, without touching the system: when /usr/bin/chromium
# is missing, `apt-get download` fetches the `chromium` package and the libraries it needs that
# this machine lacks (as `apt-get install` would resolve them, without recommends), and
# `dpkg -x` unpacks them under .tools/chromium. Works as root or not; nothing outside the
# project changes. Prints the browser's path.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/chromium
if [[ -x /usr/bin/chromium ]]; then
  echo /usr/bin/chromium
  exit 0
fi
if [[ -x $dest/usr/lib/chromium/chromium && -f $dest/.installed ]]; then
  echo "$PWD/$dest/usr/lib/chromium/chromium"
  exit 0
fi
command -v apt-get >/dev/null || { echo "no /usr/bin/chromium and no apt-get: install Debian's chromium" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$dest/debs"
packages=$(apt-get install --simulate --no-install-recommends chromium 2>/dev/null | awk '/^Inst /{print $2}')
[[ -n $packages ]] || { echo "apt-get cannot resolve chromium (apt lists missing?)" >&2; exit 1; }
# shellcheck disable=SC2086 # one word per package
(cd "$dest/debs" && apt-get download $packages >/dev/null 2>&1) || {
  echo "apt-get download failed for: $packages" >&2; exit 1; }
for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest"; done
rm -rf "$dest/debs"
touch "$dest/.installed"
echo "$PWD/$dest/usr/lib/chromium/chromium"
