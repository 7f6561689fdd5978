"""The linear probe as a convex problem: L2-regularised logistic regression on frozen features.

A linear probe measures how good frozen features are as they are. Trained by SGD for a fixed
number of epochs it measures the optimiser as much as the features (an unconverged head, a
learning rate that suits one backbone and not another). The standard protocol of SSL papers
(SimCLR, MoCo-CXR's linear evaluation, DINO's ``eval_linear`` alternative) is instead a
logistic regression trained to convergence, with its regularisation chosen on held-out labelled
data. :class:`LogisticProbe` does that with scikit-learn:

- features: the backbone's output for every labelled image (training and validation entries:
  both count against the label budget, and both are used), standardised (``StandardScaler``);
- model: ``LogisticRegression`` (L-BFGS, L2 penalty) per output for binary and multi-label tasks
  (an output's unknown labels are left out of its fit), one multinomial model for multi-class;
- regularisation: ``C`` from a log grid, chosen by ``GridSearchCV`` with ``StratifiedGroupKFold``
  over the labelled entries only (folds never split a patient; the test list never reaches the
  probe), scored by ROC AUC; then refitted on all labelled entries. With too few patients of a class
  for two folds, ``fallback_C`` is used (logged);
- result: the scaler and the coefficients are written into the classifier's feature
  standardisation and linear head, so the saved model is an ordinary classifier that the
  bundle's ``evaluate.json`` and ``inference.json`` read like any other.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from monai_cxrssl.engines.features import FeatureDataset
from monai_cxrssl.exceptions import CXRSSLError

__all__ = ["LogisticProbe", "DEFAULT_CS"]

logger = logging.getLogger(__name__)

#: the grid of inverse regularisation strengths searched by default: 1e-4 ... 1e2, two per decade
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


class LogisticProbe:
    """Fit a linear-mode classifier's head by cross-validated logistic regression (see the module docstring).

    Args:
        network: a :class:`~monai_cxrssl.networks.CXRClassifier` in ``linear`` mode.
        train_data, val_data: the labelled entries: datasets of dicts with ``image`` (precomputed
            features ``(D,)``, e.g. a :class:`~monai_cxrssl.engines.FeatureDataset`, or preprocessed images,
            whose features are computed once here), ``target`` and ``patient_id``; ``val_data`` may be
            empty or ``None``.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        best: the run's :class:`~monai_cxrssl.engines.BestModelHandler`: writes the model and its
            ``model_info.json`` (with how ``C`` was chosen).
        Cs: the grid of ``C`` (inverse L2 strength).
        cv: the most folds; fewer when a class has fewer patients.
        fallback_C: ``C`` when no cross-validation is possible.
        max_iter: L-BFGS iterations; a fit that does not converge within them is an error.
        seed: seed of the fold assignment.
        inferer: runs the feature pass over images (see :class:`~monai_cxrssl.engines.FeatureDataset`).
    """

    def __init__(self, network, train_data, val_data=None, task: str = "binary", best=None,
                 Cs: Sequence[float] = DEFAULT_CS, cv: int = 5, fallback_C: float = 0.1, max_iter: int = 5000,
                 seed: int = 0, inferer=None):
        self.network, self.train_data, self.val_data = network, train_data, val_data
        self.task, self.best = task, best
        self.Cs = [float(c) for c in Cs]
        self.cv, self.fallback_C, self.max_iter, self.seed = int(cv), float(fallback_C), int(max_iter), int(seed)
        self.inferer = inferer
        self.report: dict | None = None

    # ---- data ----------------------------------------------------------------------------------
    def _features(self, dataset):
        if dataset is None or len(dataset) == 0:
            return []
        if isinstance(dataset, FeatureDataset):
            return dataset.items
        items = [dataset[i] for i in range(len(dataset))] if np.ndim(dataset[0]["image"]) == 1 else None
        if items is None:  # preprocessed images: their features, computed once
            items = FeatureDataset(dataset, self.network, inferer=self.inferer).items
        return items

    def labelled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features ``(N, D)``, targets ``(N, K)`` (NaN: unknown) and patient groups ``(N,)`` of all labelled entries."""
        items = self._features(self.train_data) + self._features(self.val_data)
        if not items:
            raise CXRSSLError("the logistic probe has no labelled entries to fit")
        return self._arrays(items)

    @staticmethod
    def _arrays(items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.stack([np.asarray(it["image"], dtype=np.float64) for it in items])
        y = np.stack([np.asarray(it["target"], dtype=np.float64).reshape(-1) for it in items])
        groups = np.array([str(it.get("patient_id") or f"#entry{i}") for i, it in enumerate(items)])
        return x, y, groups

    # ---- fitting -------------------------------------------------------------------------------
    def _fit_one(self, x, y, groups, what: str) -> tuple:
        """Cross-validated fit of one model; returns ``(pipeline, chosen C, CV AUC or None, n_splits)``."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def pipeline(c):
            return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=self.max_iter))

        patients_per_class = [len(set(groups[y == v])) for v in np.unique(y)]
        n_splits = min([self.cv] + patients_per_class)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            try:
                if n_splits < 2:
                    logger.warning("%s: a class has %d patient(s): no cross-validation; C=%g", what,
                                   min(patients_per_class), self.fallback_C)
                    return pipeline(self.fallback_C).fit(x, y), self.fallback_C, None, 0
                search = GridSearchCV(pipeline(1.0), {"logisticregression__C": self.Cs},
                                      cv=StratifiedGroupKFold(n_splits, shuffle=True, random_state=self.seed),
                                      scoring="roc_auc" if len(np.unique(y)) == 2 else "roc_auc_ovr",
                                      refit=True, error_score="raise")
                search.fit(x, y, groups=groups)
            except ConvergenceWarning as e:
                raise CXRSSLError(f"{what}: L-BFGS did not converge in max_iter={self.max_iter} iterations ({e}); "
                                  "raise max_iter") from None
        c = float(search.best_params_["logisticregression__C"])
        if c in (self.Cs[0], self.Cs[-1]):
            logger.warning("%s: the chosen C=%g is at the edge of the grid [%g, %g]", what, c, self.Cs[0], self.Cs[-1])
        return search.best_estimator_, c, float(search.best_score_), n_splits

    def _fit_head(self, x, y, groups) -> list[dict]:
        """Fit the probe on ``(x, y, groups)`` and write the scaler and coefficients into the network."""
        head = self.network.head[-1]
        k_out = head.out_features
        weight = np.zeros((k_out, x.shape[1]))
        bias = np.zeros(k_out)
        fits = []
        if self.task == "multiclass":
            classes = y.argmax(1)
            pipe, c, score, n_splits = self._fit_one(x, classes, groups, "multi-class probe")
            scaler, lr = pipe[0], pipe[-1]
            if list(lr.classes_) != list(range(k_out)):
                raise CXRSSLError(f"the labelled entries hold classes {list(lr.classes_)}, expected 0..{k_out - 1}")
            weight, bias = lr.coef_, lr.intercept_
            mean, scale = scaler.mean_, scaler.scale_
            fits.append({"output": "all classes", "C": c, "cv_auc": score, "n_splits": n_splits, "n": len(classes)})
        else:
            # one scaler over all labelled features (the network has one standardisation); each output
            # model is fitted on standardised features, so the scaler inside each pipeline is the identity
            # up to the rows an output leaves out (unknown labels); map it back exactly below
            mean = x.mean(0)
            scale = x.std(0)
            scale[scale == 0] = 1.0
            z = (x - mean) / scale
            for k in range(k_out):
                known = ~np.isnan(y[:, k])
                pipe, c, score, n_splits = self._fit_one(z[known], y[known, k].astype(int), groups[known],
                                                         f"probe output {k}")
                s2, lr = pipe[0], pipe[-1]
                w = lr.coef_[0] / s2.scale_
                weight[k] = w
                bias[k] = lr.intercept_[0] - (w * s2.mean_).sum()
                fits.append({"output": k, "C": c, "cv_auc": score, "n_splits": n_splits, "n": int(known.sum())})
        net = self.network
        with torch.no_grad():
            net.feature_mean.copy_(torch.as_tensor(mean, dtype=net.feature_mean.dtype))
            net.feature_std.copy_(torch.as_tensor(scale, dtype=net.feature_std.dtype))
            head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        return fits

    def init_head(self) -> dict:
        """LP-FT (Kumar et al., ICLR 2022): before a ``finetune``-mode classifier trains end to end, set its
        head (and feature standardisation) to the converged probe of its frozen initial features, fitted on
        the *training* entries only (``val_data`` stays unseen, for model selection). Fine-tuning then starts
        from a head that already fits the features instead of a random one, whose first large gradients
        would otherwise reshape the pretrained features. Nothing is saved; returns what was fitted."""
        t0 = time.monotonic()
        if (getattr(self.network, "init_report", None) or {}).get("source") == "random":
            logger.warning("head_init 'probe' on a randomly initialised backbone: a probe of random features is a "
                           "poor start for fine-tuning (measured in docs/results/kermany_lpft_dino.md); it is meant "
                           "for pretrained backbones")
        items = self._features(self.train_data)
        if not items:
            raise CXRSSLError("head_init 'probe': the classifier has no training entries to fit its head on")
        x, y, groups = self._arrays(items)
        fits = self._fit_head(x, y, groups)
        report = {"head_init": "probe", "n_labelled": int(len(x)), "n_patients": int(len(set(groups))),
                  "fits": fits, "fit_time_s": round(time.monotonic() - t0, 3)}
        logger.info("head_init 'probe': head fitted by logistic regression on the frozen features of %d training "
                    "entries (%d patients), C=%s; fine-tuning starts from it", len(x), report["n_patients"],
                    [f["C"] for f in fits])
        return report

    def run(self) -> dict:
        """Fit, write the scaler and coefficients into the network, save it; returns what was chosen."""
        if getattr(self.network, "mode", None) != "linear":
            raise CXRSSLError("the logistic probe fits a linear-mode classifier (mode 'linear'); "
                              f"this one is in mode {getattr(self.network, 'mode', None)!r}")
        t0 = time.monotonic()
        x, y, groups = self.labelled()
        fits = self._fit_head(x, y, groups)
        scores = [f["cv_auc"] for f in fits if f["cv_auc"] is not None]
        cv_auc = float(np.mean(scores)) if scores else None
        self.report = {"solver": "lbfgs", "penalty": "l2", "n_labelled": int(len(x)),
                       "n_patients": int(len(set(groups))), "C_grid": [self.Cs[0], self.Cs[-1], len(self.Cs)],
                       "fits": fits, "fit_time_s": round(time.monotonic() - t0, 3)}
        if self.best is not None:
            path = self.best.save({"best_metric": None if cv_auc is None else {"cv_auc": cv_auc}, "best_epoch": None,
                                   "selection": "logistic regression, C by patient-grouped cross-validation on the "
                                                "labelled entries", "probe": self.report})
            logger.info("logistic probe on %d labelled entries (%d patients): C=%s, cross-validated AUC %s; saved %s",
                        len(x), self.report["n_patients"], [f["C"] for f in fits],
                        "n/a" if cv_auc is None else f"{cv_auc:.4f}", path)
        return self.report

