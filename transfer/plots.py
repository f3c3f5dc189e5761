"""Figures every downstream task draws: ROC curves (per fold, and averaged over folds); loss curves are
`plumbing.figures.plot_histories`."""

import numpy as np

from plumbing.figures import pyplot, save_figure


def _finish_roc(figure, axis, title, path):
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def plot_roc(curves, path, title="ROC"):
    """One PNG with a ROC curve per entry of `curves`: {label: (y_true, probability)}."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (y_true, probability) in curves.items():
        if len(np.unique(y_true)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true, probability)
        axis.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y_true, probability):.3f})")
    _finish_roc(figure, axis, title, path)


def plot_mean_roc(curves, path, title="ROC, mean over folds"):
    """One ROC per entry, averaged vertically over its folds: {label: [(y_true, probability) per fold]}.

    Each fold has its own model, so its scores are not pooled with the others'; the legend
    gives the mean of the per-fold AUCs. A fold without both classes has no ROC and is left
    out (the legend counts the folds drawn).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    grid = np.linspace(0, 1, 201)
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, folds in curves.items():
        folds = [(y, p) for y, p in folds if len(np.unique(y)) == 2]
        if not folds:
            continue
        tprs = [np.interp(grid, *roc_curve(y, p)[:2]) for y, p in folds]
        auc = np.mean([roc_auc_score(y, p) for y, p in folds])
        detail = f"mean AUC {auc:.3f}, {len(folds)} folds" if len(folds) > 1 else f"AUC {auc:.3f}"
        axis.plot(grid, np.mean(tprs, axis=0), label=f"{label} ({detail})")
    _finish_roc(figure, axis, title, path)
