"""Figures: one matplotlib set-up (the non-interactive Agg backend) and atomic PNG writes."""

from plumbing.atomic import atomic_path


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, so figures render without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path, figure, **kwargs):
    """Saves a matplotlib figure atomically and closes it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, **kwargs)
    plt.close(figure)
