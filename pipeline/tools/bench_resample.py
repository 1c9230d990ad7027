"""`medtfx bench resample`: the project's trilinear resampling (modules.transform.resample.to_network_grid,
the TF op Transform and the serving graph run) against SimpleITK's ResampleImageFilter
(sitkLinear) on the same volumes and the same output grids, in one run.

Volumes: 5 Decathlon hippocampus cases (../shared/data/hippocampus) and 2 larger synthetic CT-like
phantoms (256x256x128 @ 0.8x0.8x2.0 mm and 192^3 @ 1.2 mm), each resampled to 0.8 mm and 1.5 mm
isotropic. Both sides get their input already in their own format (a tf.Tensor; an sitk.Image)
and are timed to their native result (a computed tf.Tensor; an sitk.Image): conversions are not
timed. Ours runs as a tf.function traced once (as in a graph); both use every core by default.
One untimed warm-up per case, then `repeats` timed runs; the median is kept. The outputs are
compared too (max abs difference), so the timing is of the same work.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import statistics
import time
from typing import Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "hippocampus")
TARGETS_MM = (0.8, 1.5)
GOAL_RATIO = 2.0


def large_phantom(shape, spacing, seed: int) -> np.ndarray:
    """(X, Y, Z) float32 CT-like volume (HU): body ellipsoid with two organs, noise."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    extent = np.array(shape) * np.array(spacing) / 2
    image = np.full(shape, -1000.0, np.float32)
    image[(x / (0.9 * extent[0])) ** 2 + (y / (0.8 * extent[1])) ** 2 + (z / (0.95 * extent[2])) ** 2 <= 1] = 40
    image[((x + 0.3 * extent[0]) / 30) ** 2 + (y / 40) ** 2 + (z / 50) ** 2 <= 1] = 200
    image[((x - 0.3 * extent[0]) / 35) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 <= 1] = -120
    return image + rng.normal(0, 20, shape).astype(np.float32)


def load_volumes(data_root: str, count: int = 5) -> List[dict]:
    """[{name, array (X, Y, Z) float32, spacing (3,)}]: hippocampus cases (when present) + phantoms."""
    from modules.io.nifti_reader import read_nifti

    volumes = []
    for path in sorted(glob.glob(os.path.join(data_root, "imagesTr", "*.nii.gz")))[:count]:
        v = read_nifti(path)
        volumes.append(
            {
                "name": os.path.basename(path),
                "array": v.array.astype(np.float32),
                "spacing": np.asarray(v.spacing, float),
            }
        )
    for i, (shape, spacing) in enumerate((((256, 256, 128), (0.8, 0.8, 2.0)), ((192, 192, 192), (1.2, 1.2, 1.2)))):
        volumes.append(
            {
                "name": f"phantom_{'x'.join(map(str, shape))}",
                "spacing": np.array(spacing),
                "array": large_phantom(shape, spacing, seed=i),
            }
        )
    return volumes


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing, allocator, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def simpleitk_setup(array: np.ndarray, spacing, target: float, size):
    """(sitk.Image, ResampleImageFilter) resampling `array` onto our output grid (same centring:
    output origin ((n - 1) * s - (m - 1) * t) / 2, nearest-neighbour extrapolation at the rim)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    n, s, m = np.array(array.shape, float), np.asarray(spacing, float), np.asarray(size, float)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in size])
    f.SetOutputSpacing([float(target)] * 3)
    f.SetOutputOrigin((((n - 1) * s - (m - 1) * target) / 2).tolist())
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)
    return image, f


def benchmark(data_root: str, repeats: int = 3, targets=TARGETS_MM) -> Dict[str, object]:
    import SimpleITK as sitk
    import tensorflow as tf

    from modules.transform import resample

    fn = tf.function(
        lambda v, s, t: resample.to_network_grid(v, s, t)[0],
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([3], tf.float64),
            tf.TensorSpec([3], tf.float64),
        ],
    )
    rows = []
    for vol in load_volumes(data_root):
        array, spacing = vol["array"], vol["spacing"]
        tensor, tf_spacing = tf.constant(array), tf.constant(spacing, tf.float64)
        for target in targets:
            tf_target = tf.constant([target] * 3, tf.float64)
            size = resample.resampled_shape(array.shape, spacing, [target] * 3).numpy()
            image, sitk_filter = simpleitk_setup(array, spacing, target, size)
            ours_s = _median_time(functools.partial(fn, tensor, tf_spacing, tf_target), repeats)
            theirs_s = _median_time(functools.partial(sitk_filter.Execute, image), repeats)
            ours = fn(tensor, tf_spacing, tf_target).numpy()
            theirs = np.transpose(sitk.GetArrayFromImage(sitk_filter.Execute(image)), (2, 1, 0))
            rows.append(
                {
                    "name": vol["name"],
                    "shape": list(array.shape),
                    "spacing_mm": [round(float(s), 4) for s in spacing],
                    "target_mm": target,
                    "output_shape": [int(v) for v in size],
                    "medtfx_s": round(ours_s, 5),
                    "simpleitk_s": round(theirs_s, 5),
                    "ratio": round(ours_s / theirs_s, 3),
                    "max_abs_diff": float(np.abs(ours - theirs).max()),
                }
            )
    medtfx_s = sum(r["medtfx_s"] for r in rows)
    simpleitk_s = sum(r["simpleitk_s"] for r in rows)
    return {
        "medtfx_s": round(medtfx_s, 4),
        "simpleitk_s": round(simpleitk_s, 4),
        "ratio": round(medtfx_s / simpleitk_s, 3),
        "goal_ratio": GOAL_RATIO,
        "volumes": rows,
        "repeats": repeats,
        "targets_mm": list(targets),
        "interpolation": "trilinear (sitkLinear)",
        "simpleitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "tensorflow_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)",
        "cpu_count": os.cpu_count(),
        "simpleitk_version": sitk.Version.VersionString(),
        "tensorflow_version": tf.__version__,
    }


def main(args) -> int:
    """CLI entry (`medtfx bench resample --json FILE [--repeats N] [--data DIR]`)."""
    data_root: Optional[str] = args.data or DEFAULT_DATA
    if not os.path.isdir(os.path.join(data_root, "imagesTr")):
        print(f"note: no Decathlon imagesTr under {data_root}; timing the phantoms only")
    result = benchmark(data_root, repeats=max(1, args.repeats))
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    for row in result["volumes"]:
        print(
            f"{row['name']:<28s} {'x'.join(map(str, row['shape'])):>12s} -> {row['target_mm']} mm "
            f"{'x'.join(map(str, row['output_shape'])):>12s}  medtfx {row['medtfx_s']:.4f} s  "
            f"SimpleITK {row['simpleitk_s']:.4f} s  ratio {row['ratio']:.2f}  "
            f"max|diff| {row['max_abs_diff']:.1e}"
        )
    print(
        f"total: medtfx {result['medtfx_s']:.3f} s, SimpleITK {result['simpleitk_s']:.3f} s, "
        f"ratio {result['ratio']:.2f} (goal <= {GOAL_RATIO}); report: {args.json}"
    )
    return 0
