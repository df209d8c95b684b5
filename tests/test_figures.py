"""Figures a reader can read: labels that never overlap, the bias check on observed
against predicted, the null band on the QQ plot."""

import numpy as np
import pandas as pd

from hpcsnp.figures import place_labels, pyplot


def _overlaps(texts, renderer) -> list:
    boxes = [t.get_window_extent(renderer) for t in texts]
    return [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def test_crowded_labels_are_moved_apart_and_stay_inside_the_axes():
    """Ten SNPs within a few pixels of each other: left where they were, their labels would
    all overlap; placed, no two do, and none leaves the axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    x = np.linspace(0, 1000, 500)
    y = np.random.default_rng(0).random(500) * 0.1
    peak = np.arange(240, 250)
    y[peak] = np.linspace(0.9, 1.0, 10)
    ax.scatter(x, y, s=4)
    names = [f"Chr01_{1000 + 10 * i}" for i in range(10)]
    naive = [ax.text(x[i], y[i], n, fontsize=7) for i, n in zip(peak, names)]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert _overlaps(naive, renderer)  # the problem is real
    for t in naive:
        t.remove()
    texts = place_labels(ax, x[peak], y[peak], names)
    fig.canvas.draw()
    assert not _overlaps(texts, renderer)
    inside = ax.get_window_extent(renderer)
    for t in texts:
        b = t.get_window_extent(renderer)
        assert inside.x0 - 1 <= b.x0 and b.x1 <= inside.x1 + 1 and inside.y0 - 1 <= b.y0 and b.y1 <= inside.y1 + 1
    plt.close(fig)


def test_observed_against_predicted_reports_the_slope_breeders_check(tmp_path):
    """Predictions spread twice too widely have slope 0.5; the figure is a grid, not a strip."""
    from PIL import Image

    from hpcsnp.run.report import plot_observed_predicted, regression_slope

    rng = np.random.default_rng(1)
    truth = rng.normal(100, 10, 400)
    signal = truth - 100 + rng.normal(0, 5, 400)
    frames = [pd.DataFrame({"dataset": "d", "model": m, "truth": truth, "prediction": 100 + k * signal})
              for m, k in (("cnn", 1.0), ("gblup_dosage", 2.0), ("gblup_onehot", 0.5), ("rkhs", 1.0),
                           ("ensemble", 1.0))]
    b = regression_slope(100 + 2.0 * signal, truth)
    assert abs(2 * b - regression_slope(100 + signal, truth)) < 1e-9
    plot_observed_predicted(pd.concat(frames), tmp_path / "ovp.png")
    w, h = Image.open(tmp_path / "ovp.png").size
    assert w / h < 2  # 5 models: two rows of three, not one row of five


def test_the_qq_band_and_the_manhattan_labels_are_drawn(tmp_path):
    from hpcsnp.linear.gwas import manhattan_hits, plot_manhattan, plot_qq

    rng = np.random.default_rng(2)
    p = rng.uniform(size=2000)
    p[[100, 900, 1500]] = [1e-12, 1e-9, 1e-15]
    table = pd.DataFrame({"snp": [f"s{i}" for i in range(2000)], "chrom": np.repeat(["1", "2", "3", "4"], 500),
                          "pos": np.tile(np.arange(500) * 1000, 4), "p": p})
    hits = manhattan_hits(table, 0.05 / 2000)
    assert hits["snp"].tolist() == ["s1500", "s100", "s900"]
    plot_manhattan(table, {"bonferroni_p": 0.05 / 2000, "bh_p_threshold_5pct": 0, "lambda_gc": 1.0},
                   tmp_path / "m.png")
    plot_qq(p, 1.0, tmp_path / "qq.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000 and (tmp_path / "qq.png").stat().st_size > 10_000
