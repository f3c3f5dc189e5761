"""Figures: one matplotlib set-up (the non-interactive Agg backend), atomic PNG writes, and the loss curves."""

from plumbing.atomic import atomic_path


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, so figures render without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path, figure, **kwargs):
    """Saves a matplotlib figure atomically and closes it; a file that already holds the same picture is left
    untouched."""
    plt = pyplot()
    with atomic_path(path, keep_equal=True) as tmp:
        figure.savefig(tmp, **kwargs)
    plt.close(figure)


def plot_histories(histories, path, title="loss", ylabel="loss", log_scale=False):
    """Training and validation loss per epoch, one line pair per entry: {label: DataFrame with loss, val_loss}.

    The one loss-curve figure of the project: pretraining draws its MSE (log scale), the
    downstream tasks their binary cross-entropy per fold or run.
    """
    import numpy as np

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, (label, history) in enumerate(histories.items()):
        color = f"C{index % 10}"
        epochs = np.arange(1, len(history) + 1)
        axis.plot(epochs, history["loss"], color=color, marker="o", markersize=3, label=f"{label} train".strip())
        if "val_loss" in history:
            axis.plot(
                epochs,
                history["val_loss"],
                color=color,
                marker="o",
                markersize=3,
                linestyle="--",
                label=f"{label} validation".strip(),
            )
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    if log_scale:
        axis.set_yscale("log")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)
