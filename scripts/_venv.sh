# Sourced by the scripts in this folder: make .venv (once) and install smartpark into it with the given extras.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "test" or "" for none)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo ">> installing smartpark${extras:+[$extras]} into .venv"
python -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null
python -m pip install --disable-pip-version-check -q -e "$spec"
# With the test extra, also the example third-party plugin (a separate distribution): tests/contract/
# test_example_plugin.py runs the PaymentChannel contract on it. --no-deps: its requirements are smartpark's own,
# already installed above (the editable smartpark must not be replaced by a resolver's choice).
if [[ ",$extras," == *",test,"* ]]; then
  echo ">> installing the example plugin examples/smartpark-pay-unionpay into .venv"
  python -m pip install --disable-pip-version-check -q --no-deps -e examples/smartpark-pay-unionpay
fi
