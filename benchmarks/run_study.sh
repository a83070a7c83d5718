#!/usr/bin/env bash
# The SuperNI study in priority order (each call skips finished runs and resumes a killed one):
# every method with seeds 0-1, the unseen-task study on those runs, seed 2, all tasks, OrchMoE
# ablations, MoDE variants, the learning-rate check. Then: cd benchmarks && python study_report.py (docs/results.md).
set -uo pipefail  # a failing step does not stop the later ones
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY benchmarks/superni_study.py --stages main10 --seeds 0,1
$PY benchmarks/unseen_study.py --stages zeroshot,adapt,inspect --seeds 0,1
$PY benchmarks/superni_study.py --stages main10 --seeds 0,1,2
$PY benchmarks/superni_study.py --stages large --seeds 0
$PY benchmarks/superni_study.py --stages ablations --seeds 0
$PY benchmarks/superni_study.py --stages mode --seeds 0
$PY benchmarks/superni_study.py --stages lr --seeds 0
