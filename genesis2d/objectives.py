"""The pretraining objectives' settings with their sources: data only, no Keras, so that the options (and
`--help`) load without it. `genesis2d.contrastive` builds the objectives from them."""

# Loss and head. Sources: MoCo v2 (temperature 0.2, 128-d output, a hidden layer as wide as the features);
# DiRA's public code (restoration weight 10, discrimination 1).
TEMPERATURE = 0.2
PROJECTION_DIM = 128
RESTORATION_WEIGHT = 10.0
OBJECTIVES = ("genesis", "contrastive", "genesis+contrastive")
# Negatives: the batch's (SimCLR, the default) or a queue's (MoCo v2). Sources of the queue's constants: MoCo v2.
NEGATIVES = ("batch", "queue")
QUEUE_SIZE = 65536
KEY_MOMENTUM = 0.999
# The queue's slices (two keys each) at most this share of the training slices, so that a slice meets its own earlier
# key among its negatives in at most one step in ten. This project's bound; MoCo v2's queue holds 5% of ImageNet.
MAX_QUEUE_SHARE = 0.1
