"""The shared plotting code: files written, inputs checked, colours sequential, output reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.errors import OvertrainError
from overtrain.results.plots import Curve, InflectionMark, Panel, curve_colors, plot_curves, plot_panels

TOKENS = np.array([1e6, 2e6, 4e6, 8e6, 16e6])


def test_plot_curves_writes_png_and_svg_reproducibly(tmp_path):
    curves = [
        Curve("gamma=1", TOKENS, [3.0, 2.5, 2.4, 2.45, 2.6], y_low=[2.9, 2.4, 2.3, 2.4, 2.5], y_high=[3.1, 2.6, 2.5, 2.5, 2.7]),
        Curve("gamma=2", TOKENS, [3.5, 3.0, 3.1, 3.3, 3.6]),
        Curve("base", TOKENS, [2.9, 2.3, 2.0, 1.9, 1.85], line_style="--", color="black"),
    ]
    marks = {"gamma=1": InflectionMark(4.2e6, 2e6, 8e6), "gamma=2": InflectionMark(2.1e6, 1e6, 4e6, y=3.0)}
    options = {"x_label": "pre-training tokens", "y_label": "loss", "title": "noise probe", "inflections": marks}
    written = plot_curves(curves, out_stem=tmp_path / "noise", **options)
    assert [path.name for path in written] == ["noise.png", "noise.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"gamma=1" in written[1].read_bytes()
    first_svg = written[1].read_bytes()
    plot_curves(curves, out_stem=tmp_path / "noise", **options)
    assert written[1].read_bytes() == first_svg  # no dates or random ids: regenerated figures diff cleanly
    assert not [path for path in tmp_path.iterdir() if ".tmp-" in path.name]  # atomic writes left nothing behind


def test_plot_panels_lays_out_a_grid_and_hides_unused_axes(tmp_path):
    panel = Panel([Curve("a", TOKENS, TOKENS**-0.1)], "tokens", "loss", title="(a)", log_y=True, y_limits=(0.1, 1.0))
    written = plot_panels([panel, panel, panel], title="three panels", out_stem=tmp_path / "grid", columns=2)
    assert [path.name for path in written] == ["grid.png", "grid.svg"] and all(path.stat().st_size > 1000 for path in written)
    assert written[1].read_text().count('id="axes_') == 3  # a 2 x 2 grid draws 3 axes: the hidden fourth is not drawn


def test_bad_curves_are_user_errors(tmp_path):
    with pytest.raises(OvertrainError, match="different lengths"):
        plot_curves([Curve("a", [1, 2, 3], [1, 2])], x_label="x", y_label="y", title="", out_stem=tmp_path / "bad")
    with pytest.raises(OvertrainError, match="one edge"):
        plot_curves([Curve("a", [1, 2], [1, 2], y_low=[0, 1])], x_label="x", y_label="y", title="", out_stem=tmp_path / "bad")
    with pytest.raises(OvertrainError, match="no panels"):
        plot_panels([], title="", out_stem=tmp_path / "empty")


def test_colors_follow_a_sequential_colormap_and_groups_share_one():
    curves = [
        Curve("lr=1", [1], [1]),
        Curve("lr=1 closed form", [1], [1], group="lr=1"),
        Curve("lr=2", [1], [1]),
        Curve("reference", [1], [1], color="black"),
    ]
    colors = curve_colors(curves)
    assert list(colors) == ["lr=1", "lr=2"]  # fixed-colour curves take no slot of the colormap
    assert colors["lr=1"] != colors["lr=2"]


def test_panels_showing_the_same_many_settings_share_one_legend() -> None:
    from overtrain.results.plots import _shared_legend_labels

    def panel(labels: list[str]) -> Panel:
        return Panel([Curve(label, [1.0, 2.0], [3.0, 4.0]) for label in labels], "x", "y")

    five = [f"setting {index}" for index in range(5)]
    assert _shared_legend_labels([panel(five), panel(five)]) == five
    assert _shared_legend_labels([panel(five), panel(five[:-1] + ["other"])]) == []  # different settings: a legend each
    assert _shared_legend_labels([panel(five[:4]), panel(five[:4])]) == []  # few entries fit inside each axes
    assert _shared_legend_labels([panel(five)]) == []
