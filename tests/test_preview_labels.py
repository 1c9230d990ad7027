"""The Transform preview (components/transform/preview.py) names its labels and fills them
translucently in the same colour per label as the evaluation pictures."""

import numpy as np
import pytest

from components.segmentation_evaluator import plots
from components.transform import preview


def _case(labels_raw, labels_net, name="c"):
    """A PreviewCase whose raw / network-input labels hold the given values in small boxes."""

    def label(values, shape):
        out = np.zeros(shape, np.uint8)
        for i, v in enumerate(values):
            out[2 + 3 * i : 4 + 3 * i, 2:6, shape[2] // 2] = v
        return out

    raw_shape, net_shape = (20, 20, 8), (16, 16, 16)
    return preview.PreviewCase(
        name=name,
        modality="CT",
        raw_image=np.random.default_rng(0).normal(size=raw_shape).astype(np.float32),
        raw_label=label(labels_raw, raw_shape) if labels_raw is not None else None,
        raw_spacing=np.array([1.0, 1.0, 3.0]),
        image=np.random.default_rng(1).normal(size=net_shape).astype(np.float32),
        label=label(labels_net, net_shape) if labels_net is not None else None,
        spacing=np.array([1.25, 1.25, 1.5]),
    )


@pytest.mark.parametrize(
    "cases, expected",
    [
        ([_case([1, 2], [1, 2])], [1, 2]),
        ([_case([3], [3]), _case([1], [1])], [1, 3]),  # union over cases
        ([_case([], [5])], [5]),  # a label only the network input shows still gets a name
        ([_case(None, None)], []),
    ],
)
def test_labels_present(cases, expected):
    assert preview._labels_present(cases) == expected


@pytest.mark.parametrize("max_label", [1, 3, 12])
def test_label_colours_match_the_evaluation_pictures(max_label):
    colormap = preview.label_colormap(max_label)
    for k in range(1, max_label + 1):
        assert colormap(k - 1) == plots._label_color(k)


@pytest.mark.parametrize(
    "label_names, expected",
    [({1: "Anterior", 2: "Posterior"}, ["1 Anterior", "2 Posterior"]), (None, ["label 1", "label 2"])],
)
def test_render_names_the_labels_in_a_legend(monkeypatch, label_names, expected):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen = []
    alphas = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        alphas.extend(im.get_alpha() for ax in fig.axes for im in ax.get_images())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    png = preview.render([_case([1, 2], [1, 2])], "t", label_names)
    assert png[:4] == b"\x89PNG"
    for text in expected:
        assert text in seen
    assert preview.LABEL_ALPHA in alphas and 0 < preview.LABEL_ALPHA < 1  # fills, translucent
