#!/usr/bin/env bash
# The SuperNI study in priority order (each call skips finished runs and resumes a killed one):
# every method with seed 0, the OrchMoE ablations, seeds 1-2, MoDE variants, then all tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY benchmarks/superni_study.py --stages main10 --seeds 0
$PY benchmarks/superni_study.py --stages ablations --seeds 0
$PY benchmarks/superni_study.py --stages main10 --seeds 0,1,2
$PY benchmarks/superni_study.py --stages mode --seeds 0
$PY benchmarks/superni_study.py --stages large --seeds 0
