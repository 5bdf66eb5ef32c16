#!/usr/bin/env bash
# Installs everything the test suite needs (idempotent), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v arm-none-eabi-as >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq binutils-arm-none-eabi >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq binutils-arm-none-eabi >/dev/null
    fi
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
python3 -m pytest -q "$@"
