#!/usr/bin/env bash
# The main job: train the detector on the embedded synthetic corpus (or on TUSZ: pass papermill args).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p outputs/train
papermill nbs/train.ipynb outputs/train/train.ipynb "$@"
