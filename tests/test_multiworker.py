"""Pretraining on two machines, played by two processes on 127.0.0.1 (see genesis2d/distributed.py)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("two_workers.py")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_configs(workers=2):
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    return [
        json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}) for i in range(workers)
    ]


def start(command, tf_config=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(processes, timeout=300):
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append((process.returncode, stdout, stderr))
    for code, _stdout, stderr in results:
        assert code == 0, stderr[-3000:]
    return results


def weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def largest_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.slow
def test_two_workers_train_as_one_process_and_resume_from_the_chiefs_checkpoint(demo_manifest, tmp_path):
    steps = "2"
    out = str(tmp_path / "run")
    processes = [
        start([sys.executable, str(HELPER), "worker", str(demo_manifest), out, steps], config)
        for config in tf_configs()
    ]
    processes.append(
        start([sys.executable, str(HELPER), "reference", str(demo_manifest), str(tmp_path / "ref"), steps])
    )
    finish(processes)
    chief, other, reference, reordered, local_bn, initial = (
        weights(tmp_path / f"weights-{name}.npz")
        for name in ("0", "1", "reference", "reordered", "local-bn", "initial")
    )
    assert len(chief) == len(reference) > 50
    for a, b in zip(chief, other):  # The workers hold one model.
        np.testing.assert_array_equal(a, b)
    # Float sums in another order move this tiny BatchNorm network a little (the floor);
    # the two workers are within a few floors of one process, a wrong computation far outside.
    floor = largest_difference(reordered, reference)
    print(
        f"floor {floor:.3g}, workers {largest_difference(chief, reference):.3g}, local BatchNorm "
        f"{largest_difference(local_bn, reference):.3g}, training moved {largest_difference(reference, initial):.3g}"
    )
    assert largest_difference(chief, reference) <= 4 * floor
    assert largest_difference(local_bn, reference) > 25 * floor
    assert largest_difference(reference, initial) > 10 * floor
    # Only the chief wrote outputs.
    assert json.loads((Path(out) / "run.json").read_text())["workers"] == 2
    assert json.loads((Path(out) / "checkpoint" / "state.json").read_text())["epoch"] == 1

    # The command itself, restarted on both workers: it resumes from the chief's checkpoint, in mixed precision.
    sys.path.insert(0, str(HELPER.parent))
    from two_workers import options

    train = [
        sys.executable,
        str(ROOT / "genesis2d" / "train.py"),
        *options(str(demo_manifest), out, steps),
        "--epochs",
        "2",
        "--resume",
        "--precision",
        "mixed_float16",
        "--verbose",
        "2",
    ]
    chief_run, other_run = finish([start(train, config) for config in tf_configs()])
    assert "2 replica(s) on 2 machine(s)" in chief_run[1] and "precision mixed_float16" in chief_run[1]
    assert "Epoch 2/2" in chief_run[1] and "Epoch 1/2" not in chief_run[1] and "Epoch" not in other_run[1]
    out = Path(out)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and np.isfinite(history["val_loss"]).all()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and state["finished"]
    assert sorted(p.name for p in out.glob("samples_epoch*.png")) == ["samples_epoch001.png", "samples_epoch002.png"]
    import keras

    encoder = keras.models.load_model(out / "encoder.h5", compile=False)
    assert encoder.output_shape[-1] == 512


@pytest.mark.slow
def test_an_unreachable_peer_is_named_and_the_wait_ends(demo_manifest, tmp_path):
    mine, peer = (f"127.0.0.1:{port}" for port in free_ports(2))  # Nothing will listen on the peer's port.
    config = json.dumps({"cluster": {"worker": [mine, peer]}, "task": {"type": "worker", "index": 0}})
    train = [
        sys.executable,
        str(ROOT / "genesis2d" / "train.py"),
        "--manifest",
        str(demo_manifest),
        "--out",
        str(tmp_path / "run"),
        "--cluster-timeout",
        "3",
    ]
    stdout, stderr = start(train, config).communicate(timeout=120)
    assert (
        f"worker 0 of 2: listening on port {mine.rpartition(':')[2]} of every network interface" in stdout
        and "unauthenticated" in stdout
    )
    assert stderr.strip().splitlines()[-1] == (
        f"error: cluster: worker 1 ({peer}) did not answer within 3 s; start "
        "every worker with the same cluster, check the addresses and firewalls, "
        "or raise --cluster-timeout."
    )
    assert not (tmp_path / "run").exists()
    # Inputs are checked before any wait: a missing --shards folder is said at once.
    missing = [*train[:2], "--shards", str(tmp_path / "nowhere"), *train[4:]]
    process = start(missing, config)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "listening" not in stdout
    assert stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'}: has no index.json; write shards with `python -m preprocessing.shards`."
    ]


@pytest.mark.slow
def test_two_workers_train_the_joined_objective_as_one_process_contrasting_each_share(demo_manifest, tmp_path):
    """--objective genesis+contrastive on two workers: the weights one process gets from the same global batches with
    BatchNorm over all of them and each worker's share contrasted within itself (as several GPUs of one machine do),
    not those of contrasting the whole global batch."""
    sys.path.insert(0, str(HELPER.parent))
    from two_workers import JOINED

    steps = "2"
    out = str(tmp_path / "run")
    processes = [
        start([sys.executable, str(HELPER), "worker", str(demo_manifest), out, steps, *JOINED], config)
        for config in tf_configs()
    ]
    processes.append(start([sys.executable, str(HELPER), "joined", str(demo_manifest), str(tmp_path / "ref"), steps]))
    finish(processes)
    chief, other, reference, global_contrast = (
        weights(tmp_path / f"weights-{name}.npz") for name in ("0", "1", "joined", "joined-global")
    )
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    assert len(chief) == len(reference) > 50
    distance, wrong = largest_difference(chief, reference), largest_difference(global_contrast, reference)
    print(f"workers {distance:.3g}, the global batch contrasted {wrong:.3g}")
    assert distance < 0.1 * wrong
    card = json.loads((Path(out) / "card.json").read_text())
    assert card["objective"] == "genesis+contrastive" and card["contrast"]["views_contrasted"] == 4  # 8 / 2 workers.
    assert card["chance_val_loss"] == pytest.approx(np.log(3))
