#!/usr/bin/env bash
# System packages the integration tests use (Debian/Ubuntu): headless Chromium and its driver for the visitor
# page, CJK fonts so Chinese renders in screenshots, Xvfb for the Tk booth. Installs what is missing (as root).
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v xdotool >/dev/null 2>&1 || need+=(xdotool)
command -v xwd >/dev/null 2>&1 || need+=(x11-apps)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
fc-list 2>/dev/null | grep -qi "noto sans cjk\|noto serif cjk" || need+=(fonts-noto-cjk)
python3 -c "import tkinter" 2>/dev/null || need+=(python3-tk)

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "!! missing system packages: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo ">> installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
