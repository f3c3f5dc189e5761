"""2D Models Genesis: distortions, the U-Net, pretraining, and the transfer core that downstream tasks reuse.

Built on `preprocessing`; the downstream tasks and the study build on it and it
imports none of them. What every downstream task shares lives here once:
`transfer` (encoder initialisations, the thesis head, two-phase training),
`metrics` (metrics, statistical tests, plots) and `results` (the results
contract that the study's report reads).
"""
