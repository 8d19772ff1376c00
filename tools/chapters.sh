#!/usr/bin/env bash
# Execute library chapters in place so their committed outputs match the code: tools/chapters.sh [nbs/api/X.ipynb ...]
# (default: every chapter). Progress bars are dropped from the outputs: they say nothing once the work is done.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
nbdev_export
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || chapters=(nbs/api/*.ipynb)
for nb in "${chapters[@]}"; do
  echo "executing $nb"
  # env.sh's Agg backend (for scripts and tests) would drop every figure a cell leaves to display: the kernel gets
  # Jupyter's inline backend, so a chapter keeps the figures its prose shows
  MPLBACKEND=module://matplotlib_inline.backend_inline \
    jupyter nbconvert --log-level WARN --to notebook --execute --inplace "$nb"
  python - "$nb" <<'PY'
import re, sys, nbformat
nb = nbformat.read(sys.argv[1], 4)
bar = re.compile(r'\d+%\||[0-9?]\s*(it|rec)/s\]')  # a tqdm line, rewritten with \r as it moved
for cell in nb.cells:
    if cell.cell_type != 'code': continue
    for out in cell.outputs:
        if out.output_type == 'stream' and out.name == 'stderr':
            out.text = '\n'.join(line for line in out.text.split('\n') if not bar.search(line))
    cell.outputs = [o for o in cell.outputs if not (o.output_type == 'stream' and not o.text.strip())
                    and 'application/vnd.jupyter.widget-view+json' not in o.get('data', {})]  # a widget bar
nb.metadata.pop('widgets', None)  # the bars' widget state
nbformat.write(nb, sys.argv[1])
PY
  nbdev_clean --fname "$nb"
done
