#!/bin/sh
# Runs once when the node starts, before it takes commands. A real repository
# would create a virtualenv or download weights here.
set -e
if ! command -v python3 >/dev/null 2>&1; then
    echo "the demo workloads need python3: apt-get install python3" >&2
    exit 1
fi
echo "demo environment ready: $(python3 --version)"
