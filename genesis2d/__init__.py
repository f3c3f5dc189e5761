"""2D Models Genesis: distortions, the U-Net, pretraining, and the transfer core reused downstream."""
