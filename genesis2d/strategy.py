"""The distribution strategy for the hardware and cluster found (one device, several GPUs, several machines)."""

import json
import os

from plumbing.runtime import gpus


CLUSTERS = ("auto", "slurm")


def cluster_tasks(environ=None):
    """How many tasks the TF_CONFIG environment variable names (0 without one)."""
    environ = os.environ if environ is None else environ
    try:
        cluster = json.loads(environ.get("TF_CONFIG", "") or "{}").get("cluster") or {}
    except (json.JSONDecodeError, AttributeError):
        from plumbing.errors import UsageError

        raise UsageError("TF_CONFIG", "is not a JSON object with a 'cluster' and a 'task'") from None
    return sum(len(v) for v in cluster.values())


def pick_strategy(cluster="auto"):
    """The distribution strategy for the hardware and cluster found.

    Several machines: `MultiWorkerMirroredStrategy`, with the cluster read from TF_CONFIG
    ('auto', when it names several tasks) or from Slurm's environment ('slurm', inside
    `srun`). Otherwise `MirroredStrategy` over this machine's GPUs when it has several, and
    the default strategy (one device) when not. Call it before any other TensorFlow work:
    a multi-worker strategy must be created first.
    """
    import tensorflow as tf

    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}. Received: cluster={cluster!r}")
    if cluster == "slurm":
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if cluster_tasks() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus()) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def worker_role(strategy):
    """(index, count, chief) of this process among the workers of `strategy`; (0, 1, True) on one machine.

    The chief (a 'chief' task, else worker 0) has index 0 and is the one that writes outputs.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1, True
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    count = len(spec.get("chief", [])) + len(spec.get("worker", []))
    if count <= 1 or resolver.task_type in (None, "chief"):
        return 0, max(count, 1), True
    index = int(resolver.task_id) + (1 if "chief" in spec else 0)
    return index, count, index == 0
