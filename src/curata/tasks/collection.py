"""Which collection (or generative algorithm) an item comes from: a preset of `classify`.

`CollectionTask` is `curata.tasks.classify.ClassifyTask` with the candidates measured on collections
(calibrated logistic regression and MLP on image embeddings; `pixels` on pixel art) and the demo's
target. Like `classify` it is closed-set by default; `open_set=True` (`--open-set`) wraps its models in
`curata.tasks.openset.OpenSetClassifier`, which answers "unknown" for items of collections it never saw.

Group-aware evaluation: near-duplicate tokens (the same base art with a changed trait, one artwork
minted in several editions) make k-fold optimistic when copies land on both sides of a split. Pass
their family as `groups` to `curata.evaluate.splits.make_folds(y, groups=...)` (StratifiedGroupKFold:
a group never straddles train and test). Which column gives the family depends on the source: for
NFT collections a base-art trait (e.g. `tag:type`, `tag:base`) or a `meta:<field>` that names the
original; for the built-in demo, `tag:palette` (the algorithm must then be recognised across palettes
it was not trained on).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from curata.tasks.classify import ClassifyTask
from curata.tasks.estimators import MLP, BlockClassifier, Calibrated, default_logreg
from curata.tasks.openset import UNKNOWN, OpenSetClassifier

# Bundles saved before `curata.tasks.openset` existed pickled the open-set model under this module.
__all__ = ["UNKNOWN", "CollectionTask", "OpenSetClassifier"]


class CollectionTask(ClassifyTask):
    """Detect an item's collection (demo: its generative algorithm) from image features; closed-set unless
    `open_set`.

    Candidates: "logreg" (standardised features + logistic regression, calibrated probabilities) and
    "mlp" (one hidden layer, calibrated the same way). Targets: `label` for the demo (the algorithm); NFT
    collections use the `collection` column. For group-aware evaluation see the module docstring.
    """

    task = "collection"
    default_features = ("effnet_lite0",)
    default_target = "label"
    auto_candidates: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def features_for(cls, workspace: Any, items: pd.DataFrame) -> list[str]:
        from curata.tasks.data import choose_features

        return choose_features(workspace, items, text=False)

    def base_models(self) -> dict[str, Any]:
        def calibrated(model: Any) -> BlockClassifier:
            return BlockClassifier(blocks=self.features, model=Calibrated(model, seed=self.seed))

        return {
            # C=0.1 on standardised embeddings: strong L2 for ~500-1000 items x 1280 dims. On the demo's
            # algorithms C from 0.003 to 1 is within a point; calibrated and open-set, 0.1 did best.
            "logreg": calibrated(default_logreg(c=0.1, seed=self.seed)),
            "mlp": calibrated(MLP(hidden=(256,), alpha=1e-3, seed=self.seed)),
        }

    def candidates(self) -> dict[str, Any]:
        return {name: self._wrap(model) for name, model in self.base_models().items()}
