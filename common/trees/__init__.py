"""Federated gradient-boosted trees (XGBoost), free of Flower: what a tree sees of a row (`features`), the
shape every tree of a federation shares (`shape`), boosting, checking and appending trees (`ensemble`), and
adapting them at a factory by a recipe the federation learns (`continuation`)."""
