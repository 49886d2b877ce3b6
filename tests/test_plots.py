"""Figures: every PNG is written atomically, by `save_figure`."""

import matplotlib.pyplot as plt
import pytest

from fedicu.shared.plots import plot_learning_curves, save_figure

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


def test_learning_curves_are_saved_through_save_figure(tmp_path):
    rows = [
        {"round": r, "val_auroc": 0.6 + r / 100, "test_auroc": 0.6, "train_loss": 0.5, "val_loss": 0.4,
         "test_loss": 0.45}
        for r in (1, 2, 3)
    ]  # fmt: skip
    before = set(plt.get_fignums())
    plot_learning_curves(rows, tmp_path / "learning_curves.png")
    assert (tmp_path / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["learning_curves.png"]
    assert set(plt.get_fignums()) == before
