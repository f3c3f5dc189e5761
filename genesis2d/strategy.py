"""The distribution strategy for the hardware and cluster found (one device, several GPUs, several machines)."""

import contextlib
import json
import os
import sys
from pathlib import Path

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


CLUSTER_TIMEOUT = 300  # Seconds a worker waits for the others before it gives up (this project's choice).
REPORT_EVERY = 30  # Seconds between the lines naming the workers still missing.


def pick_strategy(cluster="auto", timeout=CLUSTER_TIMEOUT):
    """The distribution strategy for the hardware and cluster found.

    Several machines: `MultiWorkerMirroredStrategy`, with the cluster read from TF_CONFIG
    ('auto', when it names several tasks) or from Slurm's environment ('slurm', inside
    `srun`); see `start_multiworker` for the wait. Otherwise `MirroredStrategy` over this
    machine's GPUs when it has several, and the default strategy (one device) when not.
    Call it before any other TensorFlow work: a multi-worker strategy must be created first.
    """
    import tensorflow as tf

    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}. Received: cluster={cluster!r}")
    if cluster == "slurm":
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return start_multiworker(resolver, timeout)
    if cluster_tasks() > 1:
        return start_multiworker(tf.distribute.cluster_resolver.TFConfigClusterResolver(), timeout)
    if len(gpus()) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_addresses(resolver):
    """(this task's 'host:port', {name: 'host:port'} of the other tasks) of a cluster resolver."""
    spec = resolver.cluster_spec().as_dict()
    tasks = {
        f"{kind} {index}": address
        for kind in sorted(spec)
        for index, address in (enumerate(spec[kind]) if isinstance(spec[kind], list) else spec[kind].items())
    }
    me = f"{resolver.task_type} {int(resolver.task_id or 0)}"
    if me not in tasks:
        from plumbing.errors import UsageError

        raise UsageError("TF_CONFIG", f"its task ({me}) is not in its cluster ({', '.join(tasks)})")
    return tasks.pop(me), tasks


def answers(address, seconds=1.0):
    """Whether something accepts a TCP connection at 'host:port'."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            return True
    except (OSError, ValueError):
        return False


def start_multiworker(resolver, timeout=CLUSTER_TIMEOUT, report_every=REPORT_EVERY):
    """A MultiWorkerMirroredStrategy, once every worker answers; one line and a stop after `timeout` seconds.

    TensorFlow's gRPC server listens on every network interface, unauthenticated and
    unencrypted, and its wait for the other workers is silent, without an end, and holds
    Python's lock (no thread of this process runs meanwhile), so no Python signal handler
    runs until it ends, and TensorFlow takes SIGTERM for its own preemption notice and drops
    it. So a watcher process (`watch_cluster`) names the missing workers as they are awaited
    and, at the timeout, says so in one line and stops this process (exit status 137). A
    SIGTERM sent to the process group (`scancel`, `kill -TERM -PGID`) reaches the watcher,
    which says so and stops this process at once (exit status 137); Ctrl-C ends it at once
    (exit status 130: SIGINT has its default effect during the wait). Nothing is written
    before the wait ends, not even the output lock. A SIGTERM sent to this process alone
    during the wait is lost to TensorFlow: the wait then ends at the timeout.
    """
    import subprocess

    import tensorflow as tf

    mine, others = cluster_addresses(resolver)
    port = mine.rpartition(":")[2]
    print(
        f"{resolver.task_type} {int(resolver.task_id or 0)} of {len(others) + 1}: listening on port {port} of "
        f"every network interface (the cluster names it {mine}); the channel between workers is unauthenticated and "
        "unencrypted: run on a private network.",
        flush=True,
    )
    root = str(Path(__file__).resolve().parents[1])
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {root!r}); "
            "from genesis2d.strategy import watch_cluster; watch_cluster(*sys.argv[1:])",
            json.dumps(others),
            str(timeout),
            str(report_every),
            str(os.getpid()),
        ]
    )
    try:
        with default_stop_signals():
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    finally:
        watcher.kill()
        watcher.wait()


@contextlib.contextmanager
def default_stop_signals():
    """Meanwhile, Ctrl-C ends the process as it ends a program without handlers; after, SIGTERM is ours again.

    Python's KeyboardInterrupt would wait for the interpreter to run again, which it does
    not while TensorFlow waits for the workers. TensorFlow replaces the SIGTERM handler
    with its own (a preemption notice that stops nothing) while it sets the workers up:
    the handler that was in place (`plumbing.cli.Terminated`) is set again after it.
    Main thread only, where Python sets handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    terminated = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, terminated if terminated is not None else signal.SIG_DFL)


def watch_cluster(others, timeout, report_every, parent):
    """Names every `report_every` s the workers that do not answer; at `timeout` s, one line, then stops `parent`.

    A SIGTERM (sent to the process group by a scheduler) stops `parent` at once, with a line;
    when `parent` ends otherwise before the workers met (Ctrl-C), it says so in one line and ends.
    """
    import signal
    import time

    def terminated(signum, frame):
        print(
            "stopped by SIGTERM while waiting for the other workers; nothing was written.", file=sys.stderr, flush=True
        )
        os.kill(int(parent), signal.SIGKILL)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends the parent; this then says so.
    others, timeout, report_every = json.loads(others), float(timeout), float(report_every)
    begun = last_report = time.monotonic()
    while True:
        time.sleep(0.5)
        if os.getppid() != int(parent):  # Ended (SIGTERM, Ctrl-C) while it waited: nothing was written.
            print(
                "stopped while waiting for the other workers; nothing was written. Start every worker again.",
                file=sys.stderr,
                flush=True,
            )
            return
        waited = time.monotonic() - begun
        if waited < timeout and time.monotonic() - last_report < report_every:
            continue
        missing = [f"{name} ({address})" for name, address in others.items() if not answers(address)]
        if waited >= timeout:
            what = f"{', '.join(missing)} did not answer" if missing else "the workers answer but did not all start"
            print(
                f"error: cluster: {what} within {timeout:g} s; start every worker with the same cluster, check the "
                "addresses and firewalls, or raise --cluster-timeout.",
                file=sys.stderr,
                flush=True,
            )
            os.kill(int(parent), signal.SIGKILL)
            return
        last_report = time.monotonic()
        if missing:
            print(f"waiting {waited:.0f} s for {', '.join(missing)}", flush=True)


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
