"""Figures: every PNG is written atomically, by `save_figure`."""

import math

import matplotlib.pyplot as plt
import pytest

from fedicu.shared import plots
from fedicu.shared.plots import FEDERATED_CURVES, Curves, plot_learning_curves, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure(title: str = "a figure"):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 1])
    ax.set_title(title)
    return fig


def _unrenderable():
    return _figure(r"$\frac{$")  # broken mathtext: fails only when the figure is drawn


def test_a_figure_is_written_as_png_and_closed(tmp_path):
    fig = _figure()
    save_figure(fig, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes().startswith(PNG_MAGIC)
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary file left


def test_a_failing_render_leaves_no_file_and_no_temporary_file(tmp_path):
    fig = _unrenderable()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "figure.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.fignum_exists(fig.number)  # closed even though it failed


def test_an_existing_file_is_replaced_only_when_rendering_succeeds(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")
    with pytest.raises(ValueError):
        save_figure(_unrenderable(), path)
    assert path.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]

    save_figure(_figure(), path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_a_render_that_fails_halfway_through_writing_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")
    fig = _figure()

    def write_part_then_fail(f, **kwargs):
        f.write(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", write_part_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, path)
    assert path.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def _rows(train_loss: float = 0.5) -> list[dict]:
    return [
        {"round": r, "val_auroc": 0.6 + r / 100, "test_auroc": 0.6, "train_loss": train_loss, "val_loss": 0.4,
         "test_loss": 0.45}
        for r in (1, 2, 3)
    ]  # fmt: skip


def test_learning_curves_are_saved_through_save_figure(tmp_path):
    before = set(plt.get_fignums())
    plot_learning_curves(_rows(), tmp_path / "learning_curves.png", FEDERATED_CURVES, best_round=3)
    assert (tmp_path / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["learning_curves.png"]
    assert set(plt.get_fignums()) == before


def _drawn(monkeypatch, rows: list[dict], curves: Curves, best_round: int, tmp_path):
    """The figure plot_learning_curves drew: (x label, y label, legend entries, best-round line) per panel."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        save_figure(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    plot_learning_curves(rows, tmp_path / "learning_curves.png", curves, best_round)
    panels = []
    for ax in figures[0].axes:
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        best = [line for line in ax.get_lines() if line.get_label().startswith("best")]
        panels.append((ax.get_xlabel(), ax.get_ylabel(), legend, best))
    return panels


def test_a_federated_run_s_curves_mark_its_best_round_and_name_every_series(monkeypatch, tmp_path):
    auroc, loss = _drawn(monkeypatch, _rows(), FEDERATED_CURVES, 2, tmp_path)
    best = "best federated round (2): highest validation AUROC"
    assert auroc[:3] == (
        "federated round",
        "AUROC",
        ["validation AUROC (pooled over hospitals)", "test AUROC (held-out stays)", best],
    )
    assert loss[:3] == (
        "federated round",
        "binary cross-entropy loss",
        ["training loss (mean over hospitals)", "validation loss (pooled over hospitals)",
         "test loss (held-out stays)", best],
    )  # fmt: skip
    for *_, lines in (auroc, loss):
        assert [list(line.get_xdata()) for line in lines] == [[2, 2]]  # a vertical line at round 2


def test_a_baseline_s_curves_count_epochs(monkeypatch, tmp_path):
    """A baseline's row is local-epochs epochs: rows 1..3 at two epochs each end at epochs 2, 4, 6."""
    curves = Curves("epoch", 2, train="pooled stays", val="pooled over hospitals")
    auroc, loss = _drawn(monkeypatch, _rows(), curves, 3, tmp_path)
    assert auroc[0] == loss[0] == "epoch"
    assert "training loss (pooled stays)" in loss[2]
    assert [list(line.get_xdata()) for line in auroc[3]] == [[6, 6]]


def test_a_series_without_values_is_not_in_the_legend(monkeypatch, tmp_path):
    """Under DP-SGD the hospitals send no training loss: nothing to draw, nothing to list."""
    _, loss = _drawn(monkeypatch, _rows(train_loss=math.nan), FEDERATED_CURVES, 1, tmp_path)
    assert not any(entry.startswith("training loss") for entry in loss[2])


def test_the_sweep_plot_names_its_axes_and_every_series(monkeypatch, tmp_path):
    from fedicu.simulations import sweep

    def entry(setting: str, epsilon: float, auroc: float, attack: float) -> dict:
        return {"setting": setting, "epsilon": epsilon, "test_auroc": auroc, "test_auroc_sd": 0.01,
                "attack_auroc": attack, "attack_auroc_sd": 0.01}  # fmt: skip

    summary = [
        entry("federated", 1.0, 0.78, 0.51),
        entry("federated", math.inf, 0.84, 0.56),
        entry("centralized", math.inf, 0.86, 0.55),
        entry("local", math.inf, 0.79, math.nan),  # several models: no attack
    ]
    figures = []
    monkeypatch.setattr(sweep, "save_figure", lambda fig, path: figures.append(fig))
    sweep.plot(summary, tmp_path / "sweep.png", delta=1e-5)
    plt.close(figures[0])  # what save_figure would have done
    accuracy, attack = figures[0].axes
    for ax in (accuracy, attack):
        assert ax.get_xlabel() == "target ε per hospital (whole run, δ = 1e-05; ∞: no DP)"
    assert (accuracy.get_ylabel(), attack.get_ylabel()) == ("test AUROC (held-out stays)", "attack AUROC")
    legends = [[text.get_text() for text in ax.get_legend().get_texts()] for ax in (accuracy, attack)]
    assert set(legends[0]) == {
        "federated (mean ± sd over seeds)",
        "centralized, no DP (band: ± sd over seeds)",
        "local only (mean), no DP (band: ± sd over seeds)",
    }
    assert set(legends[1]) == {
        "federated (mean ± sd over seeds)",
        "centralized, no DP (band: ± sd over seeds)",
        "chance (0.5): members not told apart",
    }


def test_the_cross_site_heatmap_shows_every_model_at_every_hospital_and_each_worst(monkeypatch, tmp_path):
    from fedicu.shared.cross_site import row
    from fedicu.shared.plots import plot_cross_site

    figures = []
    monkeypatch.setattr("fedicu.shared.plots.save_figure", lambda fig, path: figures.append(fig))

    def scored(model: str, hospital: str, auroc: float, stays: int = 40):
        return row(model, hospital, None) | {"status": "ok", "auroc": auroc, "stays": stays}

    rows = [scored("federated", "north", 0.81), scored("federated", "south", 0.74, 25),
            scored("local/north", "north", 0.86), row("local/north", "south", None, failure="no reply")]  # fmt: skip
    plot_cross_site(rows, tmp_path / "cross_site.png")
    (ax, _colorbar) = figures[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["federated", "local/north"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["north\n40 stays", "south\n25 stays", "worst"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    # The failed cell stays blank; each model's worst is its lowest scored hospital.
    assert cells == {(0, 0): "0.810", (0, 1): "0.740", (0, 2): "0.740", (1, 0): "0.860", (1, 2): "0.860"}
