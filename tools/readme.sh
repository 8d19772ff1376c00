#!/usr/bin/env bash
# README.md is generated from nbs/index.ipynb (nbdev's own README path needs quarto, which pip cannot install).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README
# the index links notebooks relative to nbs/ (right in JupyterLab); the README sits one folder up
sed -i -E 's#\]\(([A-Za-z0-9_/]+\.ipynb)\)#](nbs/\1)#g' README.md
