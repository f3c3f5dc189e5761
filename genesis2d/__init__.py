"""2D Models Genesis pretraining: distortions, the U-Net and its backbones, pretraining, export and model card.

Built on `plumbing` and `preprocessing`; `transfer`, the downstream tasks and the
study build on it and it imports none of them.
"""
