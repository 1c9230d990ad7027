"""`make bench-ct`'s last step: the model the pipeline pushed for the anisotropic CT phantoms,
asked about CT scans it never saw, given as NIfTI files *without* naming their modality
(as `medtfx predict` is used on a folder of exports). Prints Dice per structure on each scan's
own grid, and checks that naming the wrong modality is refused rather than answered.

    python -m pipeline.tools.bench_ct --data workdir/ct_data --workdir workdir/ct [--cases 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

LABELS = {1: "organ", 2: "lesion"}
HELD_OUT_SEED = 1000  # the training set uses seed 0: these scans are new


def newest_version(serving_base: str) -> str:
    versions = [d for d in glob.glob(os.path.join(serving_base, "*")) if os.path.basename(d).isdigit()]
    if not versions:
        raise SystemExit(f"no pushed model under {serving_base}: run the pipeline first")
    return max(versions, key=lambda d: int(os.path.basename(d)))


def main(argv=None) -> int:
    import nibabel as nib

    from modules.metrics.dice import dice_per_label
    from pipeline.client import predict
    from pipeline.tools.phantoms import synthesize_ct

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run's workdir (serving/ below it)")
    parser.add_argument("--data", required=True, help="the training data folder (held-out scans go beside it)")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--json", default="", help="write the figures here too")
    args = parser.parse_args(argv)

    model_dir = newest_version(os.path.join(args.workdir, "serving", "medtfx-seg"))
    held_out = synthesize_ct(
        os.path.join(os.path.dirname(os.path.abspath(args.data)), "ct_held_out"), n_cases=args.cases, seed=HELD_OUT_SEED
    )
    images = sorted(glob.glob(os.path.join(held_out["decathlon"], "imagesTr", "*.nii.gz")))
    out_dir = os.path.join(args.workdir, "held_out_predictions")
    model = predict.InProcessModel(model_dir)
    records = predict.predict_inputs(model, images, out_dir, modality="", log=lambda line: None)
    per_label = {k: [] for k in LABELS}
    for image, record in zip(images, records):
        if record["status"] != "ok":
            print(f"FAILED {record['reason']}", file=sys.stderr)
            continue
        truth_img = nib.load(image.replace("imagesTr", "labelsTr"))
        mask_img = nib.load(record["outputs"]["nifti"])
        if mask_img.shape != truth_img.shape or not np.allclose(mask_img.affine, truth_img.affine, atol=1e-4):
            print(f"FAILED {image}: mask grid differs from the scan's", file=sys.stderr)
            continue
        scores = dice_per_label(
            np.asarray(truth_img.dataobj).astype(np.int32), np.asarray(mask_img.dataobj).astype(np.int32), list(LABELS)
        )
        for k, v in scores.items():
            per_label[k].append(v)
    wrong = predict.predict_inputs(
        model, images[:1], os.path.join(out_dir, "as_mr"), modality="MR", log=lambda line: None
    )[0]
    result = {
        "model": model_dir,
        "cases": len(images),
        "ok": sum(r["status"] == "ok" for r in records),
        "dice": {LABELS[k]: float(np.nanmean(v)) if v else None for k, v in per_label.items()},
        "dice_min": {LABELS[k]: float(np.nanmin(v)) if v else None for k, v in per_label.items()},
        "mr_request": wrong["status"],
        "mr_reason": wrong.get("reason", ""),
    }
    print(f"held-out CT scans predicted without --modality: {result['ok']}/{result['cases']} ok")
    for name in LABELS.values():
        print(f"  Dice {name:>6s}: mean {result['dice'][name]:.4f}  (min {result['dice_min'][name]:.4f})")
    print(f"same scan sent as MR: {wrong['status']} ({wrong.get('reason', '')[:120]})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if result["ok"] == result["cases"] and wrong["status"] == "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
