#!/usr/bin/env bash
# README.md is generated from nbs/index.ipynb (nbdev's own README path needs quarto, which pip cannot install).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README
