"""Surface-distance metrics in numpy/scipy: surface Dice, HD95 and mean surface distance, in mm.

TFMA cannot compute these (they need whole volumes and the voxel spacing), so the segmentation
evaluator runs them on the eval split's native-grid masks (components/segmentation_evaluator).
Inputs are (X, Y, Z) masks on one grid plus the voxel size in mm per array axis. Distances are
Euclidean in mm, which is exact for any orthonormal direction matrix (rotations do not change
distances; only spacing does).

Method: the surface-element ("surfel") machinery of DeepMind's surface-distance library
(github.com/google-deepmind/surface-distance, surface_distance/metrics.py and lookup_tables.py),
ported here with vectorised sorting. It implements the surface Dice of

  Nikolov S. et al., "Deep learning to achieve clinically applicable segmentation of head and
  neck anatomy for radiotherapy", arXiv:1809.04430 (2018).

  * Every 2x2x2 neighbourhood of voxels (a point on the grid of voxel corners) gets an 8-bit
    code of which of its voxels are inside the mask. Codes other than all-out and all-in are
    surface elements; each has the area (mm^2) of the marching-cubes triangles of that code,
    scaled by the spacing. Outside the array counts as outside the mask.
  * The distance from a surfel to the other surface is the Euclidean distance transform (with
    the spacing) of the other mask's surfel points.
  * Surface Dice at tolerance tau: (area of S_p within tau of S_t + area of S_t within tau of
    S_p) / (area of S_p + area of S_t).
  * HD95: the larger of the two directed 95th percentiles, each percentile weighted by surfel
    area (the smallest distance below which at least 95% of that surface's area lies).
  * Mean surface distance: the area-weighted mean over both surfaces together,
    (integral over S_p of d(., S_t) + integral over S_t of d(., S_p)) / (|S_p| + |S_t|).

Conventions for empty masks: both empty -> NaN for every metric (undefined; skipped in means).
Exactly one empty -> HD95 and mean surface distance inf, surface Dice 0.

Ported code and lookup table: Copyright 2018 Google Inc. All Rights Reserved. Licensed under the
Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0 .
Unless required by applicable law or agreed to in writing, software distributed under the License
is distributed on an "AS-IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express
or implied. See the License for the specific language governing permissions and limitations
under the License. Changes from the original: numpy argsort instead of Python sorting, the
normals stored in units of 1/8, explicit empty-mask conventions, the pooled mean distance.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

from modules.metrics.dice import dice_per_label

# Marching-cubes surfel normals of each 2x2x2 neighbourhood code, in units of 1/8 voxel face
# area; a normal's length is its triangle's area. Entry i is code i, whose bits are the
# neighbourhood's voxels (dx, dy, dz) with weight 2 ** (7 - (4 dx + 2 dy + dz)).
# From DeepMind's surface_distance/lookup_tables.py (_NEIGHBOUR_CODE_TO_NORMALS) times 8.
_NORMALS_IN_EIGHTHS = (
    (),
    ((1, 1, 1),),
    ((-1, -1, 1),),
    ((-2, -2, 0), (2, 2, 0)),
    ((1, -1, 1),),
    ((-2, 0, -2), (2, 0, 2)),
    ((1, -1, 1), (-1, -1, 1)),
    ((4, 0, 0), (2, 2, 2), (1, 1, 1)),
    ((-1, 1, 1),),
    ((1, 1, 1), (-1, 1, 1)),
    ((-2, 0, 2), (-2, 0, 2)),
    ((4, 0, 0), (-2, -2, 2), (-1, -1, 1)),
    ((2, -2, 0), (2, -2, 0)),
    ((4, 0, 0), (2, -2, 2), (-1, 1, -1)),
    ((-4, 0, 0), (-2, 2, 2), (-1, 1, 1)),
    ((4, 0, 0), (4, 0, 0)),
    ((1, -1, -1),),
    ((0, -2, -2), (0, 2, 2)),
    ((-1, -1, 1), (1, -1, -1)),
    ((0, -4, 0), (2, 2, 2), (1, 1, 1)),
    ((1, -1, 1), (1, -1, -1)),
    ((0, 0, -4), (2, 2, 2), (-1, -1, -1)),
    ((-1, -1, 1), (1, -1, 1), (1, -1, -1)),
    ((-1, -1, -1), (-2, -2, -2), (2, 2, 2), (1, 1, 1)),
    ((-1, 1, 1), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2), (-1, 1, 1)),
    ((-2, 0, 2), (-2, 0, 2), (1, -1, -1)),
    ((1, 1, 1), (3, 3, 3), (0, -2, 2), (-2, 0, 2)),
    ((1, -1, -1), (2, -2, 0), (2, -2, 0)),
    ((3, 3, 3), (0, 2, -2), (-1, -1, -1), (-2, 2, 0)),
    ((-4, 0, 0), (-1, -1, -1), (-2, -2, -2), (1, 1, 1)),
    ((-4, 0, 0), (-1, -1, -1), (-2, -2, -2)),
    ((1, -1, 1),),
    ((1, 1, 1), (1, -1, 1)),
    ((0, -2, 2), (0, 2, -2)),
    ((0, -4, 0), (1, 1, -1), (2, 2, -2)),
    ((1, -1, 1), (1, -1, 1)),
    ((1, -1, 1), (-2, 0, -2), (2, 0, 2)),
    ((0, -2, 2), (0, 2, -2), (1, -1, 1)),
    ((-3, -3, 3), (0, 2, 2), (1, 1, -1), (-2, 0, -2)),
    ((-1, 1, 1), (1, -1, 1)),
    ((1, 1, 1), (1, -1, 1), (-1, 1, 1)),
    ((0, 0, 4), (-2, -2, 2), (-1, -1, 1)),
    ((2, 2, -2), (2, 2, -2), (1, 1, -1), (-1, -1, 1)),
    ((1, -1, 1), (2, -2, 0), (2, -2, 0)),
    ((4, 0, 0), (2, -2, 2), (-1, 1, -1), (1, -1, 1)),
    ((0, 2, -2), (3, -3, -3), (-1, 1, 1), (2, 2, 0)),
    ((-4, 0, 0), (-2, -2, 2), (-1, -1, 1)),
    ((2, -2, 0), (-2, 2, 0)),
    ((0, 4, 0), (-2, 2, 2), (1, -1, -1)),
    ((0, 4, 0), (1, -1, 1), (-2, 2, -2)),
    ((0, 4, 0), (0, -4, 0)),
    ((2, -2, 0), (-2, 2, 0), (1, -1, 1)),
    ((-3, -3, -3), (-2, 0, 2), (-1, -1, -1), (-2, 2, 0)),
    ((1, 1, 1), (0, -4, 0), (-2, -2, -2), (-1, -1, -1)),
    ((0, -4, 0), (-2, -2, -2), (-1, -1, -1)),
    ((-1, 1, 1), (2, -2, 0), (-2, 2, 0)),
    ((0, 4, 0), (2, 2, -2), (-1, -1, 1), (-1, -1, 1)),
    ((-3, 3, -3), (-2, -2, 0), (-1, 1, -1), (-2, 0, 2)),
    ((0, 4, 0), (2, 2, -2), (-1, -1, 1)),
    ((2, -2, 0), (-2, 2, 0), (2, -2, 0), (2, -2, 0)),
    ((-2, -2, 0), (-2, -2, 0), (-1, -1, 1)),
    ((1, 1, 1), (-2, -2, 0), (-2, -2, 0)),
    ((-2, -2, 0), (-2, -2, 0)),
    ((-1, -1, 1),),
    ((1, 1, 1), (-1, -1, 1)),
    ((-1, -1, 1), (-1, -1, 1)),
    ((-1, -1, 1), (-2, -2, 0), (2, 2, 0)),
    ((0, -2, 2), (0, -2, 2)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1)),
    ((0, -2, 2), (0, -2, 2), (-1, -1, 1)),
    ((3, -3, 3), (0, -2, -2), (-1, 1, -1), (2, 2, 0)),
    ((-1, -1, 1), (-1, 1, 1)),
    ((1, 1, 1), (-1, -1, 1), (-1, 1, 1)),
    ((-1, -1, 1), (-2, 0, 2), (-2, 0, 2)),
    ((4, 0, 0), (-2, -2, 2), (-1, -1, 1), (-1, -1, 1)),
    ((0, 4, 0), (-2, 2, -2), (1, -1, 1)),
    ((-2, 2, -2), (-2, 2, -2), (-1, 1, -1), (-1, 1, -1)),
    ((-2, 0, -2), (3, -3, -3), (0, 2, -2), (-1, 1, 1)),
    ((4, 0, 0), (-2, 2, -2), (1, -1, 1)),
    ((-2, 0, 2), (2, 0, -2)),
    ((0, 0, 4), (-2, 2, 2), (-1, 1, 1)),
    ((-1, -1, 1), (-2, 0, 2), (2, 0, -2)),
    ((-2, 0, -2), (-3, 3, 3), (-2, -2, 0), (-1, 1, 1)),
    ((0, 0, -4), (2, 2, -2), (-1, -1, 1)),
    ((0, 0, 4), (0, 0, 4)),
    ((1, 1, 1), (1, 1, 1), (2, 2, 2), (0, 0, 4)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 4)),
    ((-2, 0, 2), (2, 0, -2), (-1, 1, 1)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1), (1, -1, 1)),
    ((-2, 0, 2), (-2, 0, 2), (-2, 0, 2), (2, 0, -2)),
    ((1, -1, 1), (2, 0, 2), (2, 0, 2)),
    ((2, 0, 2), (-3, -3, 3), (-2, 2, 0), (-1, -1, 1)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1)),
    ((1, 1, 1), (2, 0, 2), (2, 0, 2)),
    ((2, 0, 2), (2, 0, 2)),
    ((-1, -1, 1), (1, -1, 1)),
    ((1, 1, 1), (-1, -1, 1), (1, -1, 1)),
    ((-1, -1, 1), (0, -2, 2), (0, 2, -2)),
    ((0, -4, 0), (1, 1, -1), (2, 2, -2), (-1, -1, 1)),
    ((0, -2, 2), (0, -2, 2), (1, -1, 1)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1), (1, -1, 1)),
    ((0, -2, 2), (0, -2, 2), (0, -2, 2), (0, 2, -2)),
    ((0, 2, 2), (0, 2, 2), (1, -1, -1)),
    ((-1, 1, 1), (1, -1, 1), (-1, -1, 1)),
    ((-1, 1, 1), (1, -1, 1), (-1, -1, 1), (1, 1, 1)),
    ((0, 0, 4), (-2, -2, 2), (-1, -1, 1), (-1, -1, 1)),
    ((1, 1, 1), (1, -1, 1), (1, -1, -1)),
    ((0, 4, 0), (-2, 2, -2), (1, -1, 1), (1, -1, 1)),
    ((1, 1, 1), (-1, -1, 1), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2), (1, 1, 1)),
    ((1, 1, 1), (1, -1, -1)),
    ((4, 0, 0), (2, -2, -2), (1, -1, -1)),
    ((-2, 2, 2), (-1, 1, 1), (-2, 2, 2), (1, -1, -1)),
    ((3, -3, 3), (0, 2, 2), (-1, 1, -1), (-2, 0, 2)),
    ((0, -4, 0), (-2, 2, 2), (-1, 1, 1)),
    ((-3, -3, 3), (2, -2, 0), (0, 2, 2), (-1, -1, 1)),
    ((-1, 1, 1), (-2, 2, 2), (0, 0, 4)),
    ((1, 1, 1), (0, 2, 2), (0, 2, 2)),
    ((0, 2, 2), (0, 2, 2)),
    ((4, 0, 0), (2, 2, 2), (1, 1, 1), (1, 1, 1)),
    ((1, -1, 1), (-1, -1, 1), (1, 1, 1)),
    ((-2, 0, -2), (2, 0, 2), (1, 1, 1)),
    ((1, 1, 1), (1, -1, 1)),
    ((-2, -2, 0), (2, 2, 0), (1, 1, 1)),
    ((1, 1, 1), (-1, -1, 1)),
    ((1, 1, 1), (1, 1, 1)),
    ((1, 1, 1),),
    ((1, 1, 1),),
    ((1, 1, 1), (1, 1, 1)),
    ((1, 1, 1), (-1, -1, 1)),
    ((-2, -2, 0), (2, 2, 0), (1, 1, 1)),
    ((1, 1, 1), (1, -1, 1)),
    ((-2, 0, -2), (2, 0, 2), (1, 1, 1)),
    ((1, -1, 1), (-1, -1, 1), (1, 1, 1)),
    ((4, 0, 0), (2, 2, 2), (1, 1, 1), (1, 1, 1)),
    ((0, 2, 2), (0, 2, 2)),
    ((1, 1, 1), (0, 2, 2), (0, 2, 2)),
    ((-1, 1, 1), (-2, 2, 2), (0, 0, 4)),
    ((-3, -3, 3), (2, -2, 0), (0, 2, 2), (-1, -1, 1)),
    ((0, -4, 0), (-2, 2, 2), (-1, 1, 1)),
    ((3, -3, 3), (0, 2, 2), (-1, 1, -1), (-2, 0, 2)),
    ((-2, 2, 2), (-1, 1, 1), (-2, 2, 2), (1, -1, -1)),
    ((4, 0, 0), (2, -2, -2), (1, -1, -1)),
    ((1, 1, 1), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2), (1, 1, 1)),
    ((1, 1, 1), (-1, -1, 1), (1, -1, -1)),
    ((0, 4, 0), (-2, 2, -2), (1, -1, 1), (1, -1, 1)),
    ((1, 1, 1), (1, -1, 1), (1, -1, -1)),
    ((0, 0, 4), (-2, -2, 2), (-1, -1, 1), (-1, -1, 1)),
    ((-1, 1, 1), (1, -1, 1), (-1, -1, 1), (1, 1, 1)),
    ((-1, 1, 1), (1, -1, 1), (-1, -1, 1)),
    ((0, 2, 2), (0, 2, 2), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2), (0, 2, 2), (0, 2, 2)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1), (1, -1, 1)),
    ((0, -2, 2), (0, -2, 2), (1, -1, 1)),
    ((0, -4, 0), (1, 1, -1), (2, 2, -2), (-1, -1, 1)),
    ((-1, -1, 1), (0, -2, 2), (0, 2, -2)),
    ((1, 1, 1), (-1, -1, 1), (1, -1, 1)),
    ((-1, -1, 1), (1, -1, 1)),
    ((2, 0, 2), (2, 0, 2)),
    ((1, 1, 1), (2, 0, 2), (2, 0, 2)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1)),
    ((2, 0, 2), (-3, -3, 3), (-2, 2, 0), (-1, -1, 1)),
    ((1, -1, 1), (2, 0, 2), (2, 0, 2)),
    ((-2, 0, -2), (2, 0, 2), (2, 0, 2), (2, 0, 2)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1), (1, -1, 1)),
    ((-2, 0, 2), (2, 0, -2), (-1, 1, 1)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 4)),
    ((1, 1, 1), (1, 1, 1), (2, 2, 2), (0, 0, 4)),
    ((0, 0, 4), (0, 0, 4)),
    ((0, 0, -4), (2, 2, -2), (-1, -1, 1)),
    ((-2, 0, -2), (-3, 3, 3), (-2, -2, 0), (-1, 1, 1)),
    ((-1, -1, 1), (-2, 0, 2), (2, 0, -2)),
    ((0, 0, 4), (-2, 2, 2), (-1, 1, 1)),
    ((-2, 0, 2), (2, 0, -2)),
    ((4, 0, 0), (-2, 2, -2), (1, -1, 1)),
    ((-2, 0, -2), (3, -3, -3), (0, 2, -2), (-1, 1, 1)),
    ((-2, 2, -2), (-2, 2, -2), (-1, 1, -1), (-1, 1, -1)),
    ((0, 4, 0), (-2, 2, -2), (1, -1, 1)),
    ((4, 0, 0), (-2, -2, 2), (-1, -1, 1), (-1, -1, 1)),
    ((-1, -1, 1), (-2, 0, 2), (-2, 0, 2)),
    ((1, 1, 1), (-1, -1, 1), (-1, 1, 1)),
    ((-1, -1, 1), (-1, 1, 1)),
    ((3, -3, 3), (0, -2, -2), (-1, 1, -1), (2, 2, 0)),
    ((0, -2, 2), (0, -2, 2), (-1, -1, 1)),
    ((0, 0, 4), (2, -2, 2), (1, -1, 1)),
    ((0, -2, 2), (0, -2, 2)),
    ((-1, -1, 1), (-2, -2, 0), (2, 2, 0)),
    ((-1, -1, 1), (-1, -1, 1)),
    ((1, 1, 1), (-1, -1, 1)),
    ((-1, -1, 1),),
    ((-2, -2, 0), (-2, -2, 0)),
    ((1, 1, 1), (-2, -2, 0), (-2, -2, 0)),
    ((-2, -2, 0), (-2, -2, 0), (-1, -1, 1)),
    ((-2, -2, 0), (-2, -2, 0), (-2, -2, 0), (2, 2, 0)),
    ((0, 4, 0), (2, 2, -2), (-1, -1, 1)),
    ((-3, 3, -3), (-2, -2, 0), (-1, 1, -1), (-2, 0, 2)),
    ((0, 4, 0), (2, 2, -2), (-1, -1, 1), (-1, -1, 1)),
    ((-1, 1, 1), (2, -2, 0), (-2, 2, 0)),
    ((0, -4, 0), (-2, -2, -2), (-1, -1, -1)),
    ((1, 1, 1), (0, -4, 0), (-2, -2, -2), (-1, -1, -1)),
    ((-3, -3, -3), (-2, 0, 2), (-1, -1, -1), (-2, 2, 0)),
    ((2, -2, 0), (-2, 2, 0), (1, -1, 1)),
    ((0, 4, 0), (0, -4, 0)),
    ((0, 4, 0), (1, -1, 1), (-2, 2, -2)),
    ((0, 4, 0), (-2, 2, 2), (1, -1, -1)),
    ((2, -2, 0), (-2, 2, 0)),
    ((-4, 0, 0), (-2, -2, 2), (-1, -1, 1)),
    ((0, 2, -2), (3, -3, -3), (-1, 1, 1), (2, 2, 0)),
    ((4, 0, 0), (2, -2, 2), (-1, 1, -1), (1, -1, 1)),
    ((1, -1, 1), (2, -2, 0), (2, -2, 0)),
    ((2, 2, -2), (2, 2, -2), (1, 1, -1), (-1, -1, 1)),
    ((0, 0, 4), (-2, -2, 2), (-1, -1, 1)),
    ((1, 1, 1), (1, -1, 1), (-1, 1, 1)),
    ((-1, 1, 1), (1, -1, 1)),
    ((-3, -3, 3), (0, 2, 2), (1, 1, -1), (-2, 0, -2)),
    ((0, -2, 2), (0, 2, -2), (1, -1, 1)),
    ((1, -1, 1), (-2, 0, -2), (2, 0, 2)),
    ((1, -1, 1), (1, -1, 1)),
    ((0, -4, 0), (1, 1, -1), (2, 2, -2)),
    ((0, -2, 2), (0, 2, -2)),
    ((1, 1, 1), (1, -1, 1)),
    ((1, -1, 1),),
    ((-4, 0, 0), (-1, -1, -1), (-2, -2, -2)),
    ((-4, 0, 0), (-1, -1, -1), (-2, -2, -2), (1, 1, 1)),
    ((3, 3, 3), (0, 2, -2), (-1, -1, -1), (-2, 2, 0)),
    ((1, -1, -1), (2, -2, 0), (2, -2, 0)),
    ((1, 1, 1), (3, 3, 3), (0, -2, 2), (-2, 0, 2)),
    ((-2, 0, 2), (-2, 0, 2), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2), (-1, 1, 1)),
    ((-1, 1, 1), (1, -1, -1)),
    ((-1, -1, -1), (-2, -2, -2), (2, 2, 2), (1, 1, 1)),
    ((-1, -1, 1), (1, -1, 1), (1, -1, -1)),
    ((0, 0, -4), (2, 2, 2), (-1, -1, -1)),
    ((1, -1, 1), (1, -1, -1)),
    ((0, -4, 0), (2, 2, 2), (1, 1, 1)),
    ((-1, -1, 1), (1, -1, -1)),
    ((0, -2, -2), (0, 2, 2)),
    ((1, -1, -1),),
    ((4, 0, 0), (4, 0, 0)),
    ((-4, 0, 0), (-2, 2, 2), (-1, 1, 1)),
    ((4, 0, 0), (2, -2, 2), (-1, 1, -1)),
    ((2, -2, 0), (2, -2, 0)),
    ((4, 0, 0), (-2, -2, 2), (-1, -1, 1)),
    ((-2, 0, 2), (-2, 0, 2)),
    ((1, 1, 1), (-1, 1, 1)),
    ((-1, 1, 1),),
    ((4, 0, 0), (2, 2, 2), (1, 1, 1)),
    ((1, -1, 1), (-1, -1, 1)),
    ((-2, 0, -2), (2, 0, 2)),
    ((1, -1, 1),),
    ((-2, -2, 0), (2, 2, 0)),
    ((-1, -1, 1),),
    ((1, 1, 1),),
    (),
)

_CODE_ALL_INSIDE = 0b11111111


def _normals_table() -> np.ndarray:
    """(256, 4, 3) float64: each code's surfel normals in voxel-face units, zero-padded."""
    table = np.zeros((len(_NORMALS_IN_EIGHTHS), 4, 3))
    for code, normals in enumerate(_NORMALS_IN_EIGHTHS):
        if normals:
            table[code, : len(normals)] = np.asarray(normals, dtype=np.float64) / 8.0
    return table


_NORMALS = _normals_table()


def _validated_spacing(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing {values.tolist()}: expected 3 positive voxel sizes in mm")
    return values


def surfel_area_table(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """(256,) float64: the surfel area (mm^2) of each 2x2x2 neighbourhood code at `spacing`.

    A normal's component along axis i is an area in the plane of the other two axes, so it
    scales with the product of their spacings.

    Raises:
      ValueError: if `spacing` is not 3 positive finite numbers.
    """
    s = _validated_spacing(spacing)
    face_areas = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
    return np.linalg.norm(_NORMALS * face_areas, axis=-1).sum(axis=-1)


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """(X + 1, Y + 1, Z + 1) uint8: the code of every voxel-corner point of an (X, Y, Z) mask.

    Point (i, j, k) is the corner shared by voxels (i - 1 .. i, j - 1 .. j, k - 1 .. k); voxel
    (i - 1 + dx, j - 1 + dy, k - 1 + dz) sets bit 7 - (4 dx + 2 dy + dz). Voxels outside the
    array are outside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1).astype(np.uint8)
    n0, n1, n2 = (n + 1 for n in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                bit = np.uint8(1 << (7 - (4 * dx + 2 * dy + dz)))
                codes |= padded[dx : dx + n0, dy : dy + n1, dz : dz + n2] * bit
    return codes


@dataclasses.dataclass(frozen=True)
class SurfaceDistances:
    """The surfels of two masks: their areas and their distances to the other mask's surface.

    prediction_to_truth (n_p,) mm and prediction_areas (n_p,) mm^2 describe the prediction's
    surfels, truth_to_prediction (n_t,) and truth_areas (n_t,) the truth's, in matching order.
    An empty mask has no surfels; when the other mask is empty the distances are inf.
    """

    prediction_to_truth: np.ndarray
    prediction_areas: np.ndarray
    truth_to_prediction: np.ndarray
    truth_areas: np.ndarray

    @property
    def total_area(self) -> float:
        """mm^2 of both surfaces together (0 when both masks are empty)."""
        return float(self.prediction_areas.sum() + self.truth_areas.sum())

    @property
    def one_surface_missing(self) -> bool:
        """Exactly one of the two masks is empty."""
        return (self.prediction_areas.size == 0) != (self.truth_areas.size == 0)


def _distance_to(border: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) of every grid point to the nearest point of `border` (inf when it has none)."""
    if not border.any():
        return np.full(border.shape, np.inf)
    return ndimage.distance_transform_edt(~border, sampling=spacing)


def surface_distances(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surfels of two (X, Y, Z) masks on one grid, with areas and distances to the other surface.

    Args:
      prediction, truth: (X, Y, Z) masks (nonzero = inside), equal shapes.
      spacing: (3,) voxel size in mm along each array axis.
    Returns:
      SurfaceDistances; distances in mm, areas in mm^2.
    Raises:
      ValueError: if the masks are not 3D, differ in shape, or `spacing` is not 3 positive numbers.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.ndim != 3 or prediction.shape != truth.shape:
        raise ValueError(f"masks must be 3D and of equal shape, got {prediction.shape} and {truth.shape}")
    spacing_mm = _validated_spacing(spacing)
    union = prediction | truth
    if not union.any():
        nothing = np.zeros(0)
        return SurfaceDistances(nothing, nothing, nothing, nothing)
    # Every surfel lies on the union's bounding box or inside it, and exact distance transforms
    # measure to every border point in the array, so cropping changes no distance.
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    codes_p, codes_t = neighbourhood_codes(prediction[box]), neighbourhood_codes(truth[box])
    border_p = (codes_p != 0) & (codes_p != _CODE_ALL_INSIDE)
    border_t = (codes_t != 0) & (codes_t != _CODE_ALL_INSIDE)
    areas = surfel_area_table(spacing_mm)
    return SurfaceDistances(
        prediction_to_truth=_distance_to(border_t, spacing_mm)[border_p],
        prediction_areas=areas[codes_p[border_p]],
        truth_to_prediction=_distance_to(border_p, spacing_mm)[border_t],
        truth_areas=areas[codes_t[border_t]],
    )


def _area_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Smallest distance d such that surfels at distance <= d hold >= percent % of the area
    (inf for a surface without surfels)."""
    if distances.size == 0:
        return float("inf")
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[order][min(index, distances.size - 1)])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """Hausdorff distance at `percent` (95 = HD95), in mm: the larger of the two directed
    area-weighted percentiles. NaN when both masks are empty, inf when exactly one is.

    Raises:
      ValueError: if `percent` is outside [0, 100].
    """
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent {percent}: expected a value in [0, 100]")
    if distances.total_area == 0:
        return float("nan")
    return max(
        _area_percentile(distances.prediction_to_truth, distances.prediction_areas, percent),
        _area_percentile(distances.truth_to_prediction, distances.truth_areas, percent),
    )


def mean_surface_distance(distances: SurfaceDistances) -> float:
    """Area-weighted mean distance (mm) over both surfaces together. NaN when both masks are
    empty, inf when exactly one is."""
    if distances.total_area == 0:
        return float("nan")
    if distances.one_surface_missing:
        return float("inf")
    weighted = (
        distances.prediction_to_truth @ distances.prediction_areas
        + distances.truth_to_prediction @ distances.truth_areas
    )
    return float(weighted / distances.total_area)


def surface_dice(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Surface Dice in [0, 1] at `tolerance_mm` (Nikolov et al. 2018): the area share of both
    surfaces lying within the tolerance of the other. NaN when both masks are empty.

    Raises:
      ValueError: if `tolerance_mm` is negative.
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm {tolerance_mm}: expected >= 0")
    if distances.total_area == 0:
        return float("nan")
    within = (
        distances.prediction_areas[distances.prediction_to_truth <= tolerance_mm].sum()
        + distances.truth_areas[distances.truth_to_prediction <= tolerance_mm].sum()
    )
    return float(within / distances.total_area)


def label_metrics(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], labels: Iterable[int], tolerance_mm: float
) -> Dict[int, Dict[str, float]]:
    """Per-label metrics of two (X, Y, Z) integer label maps on one grid.

    Returns {label: {'dice', 'hd95_mm', 'msd_mm', 'surface_dice'}}: volumetric Dice
    (modules.metrics.dice), HD95 and mean surface distance in mm, surface Dice at `tolerance_mm`; the
    surface metrics share one SurfaceDistances per label.
    Raises:
      ValueError: as surface_distances, or for a negative `tolerance_mm`.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    labels = [int(k) for k in labels]
    dice = dice_per_label(truth, prediction, labels)
    out: Dict[int, Dict[str, float]] = {}
    for k in labels:
        distances = surface_distances(prediction == k, truth == k, spacing)
        out[k] = {
            "dice": dice[k],
            "hd95_mm": robust_hausdorff(distances, 95.0),
            "msd_mm": mean_surface_distance(distances),
            "surface_dice": surface_dice(distances, tolerance_mm),
        }
    return out


def summarise(values: Iterable[float]) -> Dict[str, Optional[float]]:
    """{'mean', 'median', 'n', 'n_infinite'} of finite values (NaN skipped, inf counted apart).

    JSON-friendly: mean/median are None when there is no finite value.
    """
    arr = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "median": float(np.median(finite)) if finite.size else None,
        "n": int(arr.size),
        "n_infinite": int(arr.size - finite.size),
    }
