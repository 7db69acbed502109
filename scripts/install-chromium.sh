#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (Playwright's own browser download needs
# the internet; Debian's package comes from the package mirror).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "chromium is missing: install it with 'apt-get install chromium' as root" >&2; exit 1; }
  SUDO=sudo
fi
echo "installing Debian's chromium for the browser tests (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "apt-get finished but chromium is not on PATH" >&2; exit 1; }
echo "chromium: $(chromium --version 2>/dev/null)" >&2
