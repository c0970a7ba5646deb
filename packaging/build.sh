#!/usr/bin/env bash
# Build the one-folder app into dist/QuantTune with PyInstaller, then check that it starts:
# `QuantTune --help` (headless) and `QuantTune models --json` (finds the bundled model).
# Usage: packaging/build.sh   (from a venv with `pip install -e '.[package]'`)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m PyInstaller --noconfirm --clean --distpath dist --workpath build packaging/quanttune.spec
./dist/QuantTune/QuantTune --help > /dev/null
./dist/QuantTune/QuantTune models --json
echo "built: dist/QuantTune ($(du -sh dist/QuantTune | cut -f1))"
