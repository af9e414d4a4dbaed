#!/usr/bin/env bash
# Set up, train a small sentence VAE on the embedded WordNet corpus (a few
# minutes on 2 CPU cores), then show prior samples, completions and an
# interpolation. A finished run in runs/quickstart is reused, never overwritten.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN=${RUN:-runs/quickstart}
STATUS=$( [ -d "$RUN" ] && textvae -q info "$RUN" --get status 2>/dev/null || true )  # finished, resumable or none
if [ "$STATUS" = finished ]; then
  echo "textvae: using the finished run in $RUN (delete it to train again)" >&2
elif [ "$STATUS" = resumable ]; then
  textvae train --resume "$RUN"
else
  textvae train --data data/wordnet --out "$RUN" --config quickstart
fi
echo; echo "== prior samples: textvae sample $RUN -n 8 --seed 0"
textvae sample "$RUN" -n 8 --seed 0
echo; echo "== completions: textvae complete $RUN \"the man\" -n 4 --seed 0"
textvae complete "$RUN" "the man" -n 4 --seed 0
echo; echo "== interpolation: textvae interpolate $RUN \"he ran a mile\" \"she sang a beautiful song\" --steps 6"
textvae interpolate "$RUN" "he ran a mile" "she sang a beautiful song" --steps 6
