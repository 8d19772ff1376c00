#!/usr/bin/env bash
# The main job: train the detector on the embedded synthetic corpus (or on TUSZ: pass papermill args).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p outputs/train
papermill nbs/train.ipynb outputs/train/train.ipynb --stdout-file outputs/train/stdout.txt "$@"
# papermill shows only its progress bar: end on what the run produced and where (the notebook's last cell)
grep -A3 '^dev AUROC' outputs/train/stdout.txt
echo "The executed notebook, with its figures: outputs/train/train.ipynb"
