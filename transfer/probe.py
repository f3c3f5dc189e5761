"""Linear probe: did pretraining learn features, or only a good initialisation?

The encoder stays frozen; each image becomes the global average of the encoder's last
feature map (its `encoder_output`), and a logistic regression (scikit-learn, features
standardised) is fitted on the training images. Its regularisation C is chosen on
the training split only: grouped, stratified cross-validation (no group, e.g. a scan
or a patient, on both sides of a split; `StratifiedGroupKFold`) over `C_GRID`,
scored by AUC; then refitted on the whole training split. The downstream commands
run it with `--probe` and write its test scores through the results contract, so
the report shows probe and fine-tuning side by side.
"""

import numpy as np

from plumbing.errors import InputError

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # Inverse L2 strength: 1e-4 .. 100.
PROBE_FOLDS = 5


def encoder_features(encoder, data):
    """(N, channels) float64: each image's encoder output, averaged over space.

    Args:
        encoder: keras.Model ending in `encoder_output` (frozen: run in inference mode).
        data: a tf.data dataset of image batches or of (image, label) batches, in order.
    """
    import keras

    from transfer.finetune import predicted

    pooled = keras.Model(encoder.input, keras.layers.GlobalAveragePooling2D(name="probe_gap")(encoder.output))
    return predicted(pooled, data).astype(np.float64)


def fit_probe(features, labels, groups, seed=0, c_grid=C_GRID, folds=PROBE_FOLDS):
    """A logistic regression on standardised features, C chosen by grouped cross-validated AUC.

    Args:
        features: (N, D) array. labels: (N,) 0/1. groups: (N,) ids of the independent units.
        seed: int. Seeds the fold assignment.
        c_grid: the values of C tried.
        folds: int. Cross-validation folds (fewer when there are fewer groups of a class).

    Returns:
        (fitted sklearn Pipeline, record dict: chosen C, its mean cross-validated AUC, every C's).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups)
    per_class = [len(np.unique(groups[labels == c])) for c in (0, 1)]
    splits = min(folds, *per_class)
    if splits < 2:
        raise InputError(
            "linear probe",
            f"needs both classes in at least 2 groups of the training split; it has "
            f"{per_class[0]} negative and {per_class[1]} positive group(s)",
        )
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        {"logisticregression__C": list(c_grid)},
        scoring="roc_auc",
        cv=StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed),
        refit=True,
    )
    search.fit(np.asarray(features), labels, groups=groups)
    record = {
        "C": float(search.best_params_["logisticregression__C"]),
        "cv_auc": float(search.best_score_),
        "cv_folds": int(splits),
        "grid": {f"{c:g}": float(a) for c, a in zip(c_grid, search.cv_results_["mean_test_score"])},
    }
    return search.best_estimator_, record


class LinearProbe:
    """A fitted probe: the frozen encoder and the logistic regression on its pooled features."""

    def __init__(self, encoder, model, record):
        self.encoder, self.model, self.record = encoder, model, record

    def predict(self, data):
        """Probabilities (N,) of a dataset of image batches (or of (image, label) batches), in order."""
        return self.model.predict_proba(encoder_features(self.encoder, data))[:, 1]

    def saliency(self, images):
        """(N, H, W) class activation maps in [0, 1]: each location's share of the probe's logit.

        The logit is linear in the pooled features, sum_c w_c (mean A_c - mu_c) / s_c + b, so
        the map sum_c (w_c / s_c) A_c(y, x) is its exact split over locations (Zhou et al.
        2016), what Grad-CAM gives for a linear head; rectified, resized and scaled per image.
        """
        from transfer.saliency import image_maps

        scaler, logistic = self.model[0], self.model[-1]
        weights = (logistic.coef_[0] / scaler.scale_).astype(np.float32)
        features = self.encoder.predict(np.asarray(images, dtype=np.float32), verbose=0)
        return image_maps(np.tensordot(features, weights, axes=([-1], [0])), np.asarray(images).shape[1:3])


def linear_probe(encoder, train, train_labels, train_groups, seed=0):
    """Fits the probe on a training dataset (see `fit_probe`); returns a LinearProbe."""
    model, record = fit_probe(encoder_features(encoder, train), train_labels, train_groups, seed)
    return LinearProbe(encoder, model, record)


def probe_encoder(encoder_spec, input_shape, train, train_labels, train_groups, seed):
    """`linear_probe` on the encoder an EncoderSpec names (seeded, so a scratch encoder is the same each time)."""
    import keras

    keras.utils.set_random_seed(seed)
    encoder = encoder_spec.load(input_shape)
    return linear_probe(encoder, train, train_labels, train_groups, seed)
