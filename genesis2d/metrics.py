"""Binary classification metrics and plots, written once for every downstream task."""

import numpy as np

from preprocessing.atomic import save_figure


def binary_metrics(y_true, probability, threshold=0.5):
    """AUC, accuracy, sensitivity, specificity (and counts) of probabilities against 0/1 labels.

    AUC is NaN when only one class is present (it is undefined there).
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype=float)
    predicted = probability >= threshold
    positives, negatives = y_true == 1, y_true == 0
    tp, tn = int(np.sum(predicted & positives)), int(np.sum(~predicted & negatives))
    both = positives.any() and negatives.any()
    return {
        "auc": float(roc_auc_score(y_true, probability)) if both else float("nan"),
        "accuracy": float(np.mean(predicted == positives)) if len(y_true) else float("nan"),
        "sensitivity": tp / int(positives.sum()) if positives.any() else float("nan"),
        "specificity": tn / int(negatives.sum()) if negatives.any() else float("nan"),
        "n": int(len(y_true)),
        "n_positive": int(positives.sum()),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves, path, title="ROC"):
    """One PNG with a ROC curve per entry of `curves`: {label: (y_true, probability)}."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (y_true, probability) in curves.items():
        if len(np.unique(y_true)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true, probability)
        axis.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y_true, probability):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def plot_histories(histories, path, title="loss"):
    """Training and validation loss per epoch, one line pair per entry: {label: DataFrame}."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, (label, history) in enumerate(histories.items()):
        color = f"C{index % 10}"
        epochs = np.arange(1, len(history) + 1)
        axis.plot(epochs, history["loss"], color=color, label=f"{label} train")
        if "val_loss" in history:
            axis.plot(epochs, history["val_loss"], color=color, linestyle="--", label=f"{label} validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("binary cross-entropy")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)
