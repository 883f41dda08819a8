#!/usr/bin/env bash
# The zombie scenario against the services of a commit before offset fencing (default f44c0aa^,
# the parent of the fencing commit), run from a temporary git worktree: the scenario's judging
# (migrations, oracle, checks) stays this tree's, the ingest and classifiers are the old tree's
# (tests/chaos/harness.py, TIERFLOW_CHAOS_SERVICES_FROM). It is expected to FAIL there (a woken
# zombie moves stored offsets back) and to pass on this tree:
#   scripts/chaos-unfenced.sh            # old tree: exits non-zero
#   .venv/bin/pytest tests/chaos/test_zombie.py -k short -q   # this tree: passes
set -u
cd "$(dirname "$0")/.."
rev=${1:-f44c0aa^}
form=${2:-short}
dir=$(mktemp -d /tmp/tierflow-unfenced.XXXXXX)
git worktree add --detach "$dir" "$rev" >/dev/null
trap 'git worktree remove --force "$dir"' EXIT
TIERFLOW_CHAOS_SERVICES_FROM="$dir" .venv/bin/pytest tests/chaos/test_zombie.py -k "$form" -q \
    -p no:cacheprovider
