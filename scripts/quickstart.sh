#!/usr/bin/env bash
# Set up; show what the built-in `wordnet` model does (prior samples,
# completions, an interpolation: seconds); then train a small sentence VAE of
# your own on the embedded WordNet corpus (a few minutes on 2 CPU cores) and
# show the same for it. A finished run in runs/quickstart is reused, never
# overwritten.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if textvae -q models >/dev/null 2>&1; then
  echo "== the built-in model: textvae sample wordnet -n 5 --seed 0"
  textvae -q sample wordnet -n 5 --seed 0
  echo; echo "== textvae complete wordnet \"the man\" -n 3 --seed 0"
  textvae -q complete wordnet "the man" -n 3 --seed 0
  echo; echo "== textvae interpolate wordnet \"he ran a mile\" \"she sang a beautiful song\" --steps 5"
  textvae -q interpolate wordnet "he ran a mile" "she sang a beautiful song" --steps 5
  echo; echo "== now a small model of your own (runs/quickstart)"
fi
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
