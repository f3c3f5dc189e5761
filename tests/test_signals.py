"""SIGTERM (a scheduler's notice, `docker stop`) stops a command as Ctrl-C does: released, resumable, exit 143."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PRETRAIN as TINY
from test_multiworker import free_ports
from test_pretrain import _arrays

from genesis2d.checkpoint import load_state
from plumbing.cli import run_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigterm_ends_a_command_with_143_and_the_continue_line(capsys):
    def work(_):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # Interrupted by the handler at once.

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        run_command(lambda argv: "args", work, [], interrupted=lambda args: "resume it")
    assert stop.value.code == 143
    assert capsys.readouterr().err.strip() == "stopped by SIGTERM: resume it"
    assert signal.getsignal(signal.SIGTERM) is before  # Handed back as it was.
    with pytest.raises(SystemExit) as stop:  # A command without its own line says the project's.
        run_command(lambda argv: "args", work, [])
    assert stop.value.code == 143
    assert "run the same command again to continue" in capsys.readouterr().err


SLOW_PRETRAINING = textwrap.dedent("""
    import sys, time, keras
    import genesis2d.pretrain as pretrain

    class Slow(keras.callbacks.Callback):  # Time to be stopped mid-epoch; the arithmetic is untouched.
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.25)

    callbacks = pretrain._callbacks
    pretrain._callbacks = lambda *args: [*callbacks(*args), Slow()]
    pretrain.main(sys.argv[1:])
""")


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_pretraining_resumably_and_bit_identical(demo_manifest, tmp_path):
    out = tmp_path / "run"
    extra = ("--epochs", "2", "--steps-per-epoch", "6", "--checkpoint-every", "2")
    argv = ["--manifest", str(demo_manifest), "--out", str(out), *TINY, *extra]
    # The environment of this process, oneDNN's setting included: the resumed and the whole run train here, and
    # kernels that add in another order would differ in the last bits.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_PRETRAINING, *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    state_file = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 180
    while not (state_file.is_file() and json.loads(state_file.read_text())["step"] >= 2):  # Mid-epoch 1.
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM: continue with `python genesis2d/train.py --resume --out {out}` (and the same options)."
    )
    assert not (out / ".lock").exists()
    state = load_state(out / "checkpoint")
    assert state["epoch"] == 0 and not state.get("finished")
    # The resumed and the whole run in fresh processes too, so that nothing this test process set up before (other
    # tests' global state) can make their kernels differ from the stopped run's.
    train = [sys.executable, str(ROOT / "genesis2d" / "train.py")]
    resumed_run = subprocess.run([*train, *argv, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed_run.returncode == 0, resumed_run.stderr[-2000:]
    assert load_state(out / "checkpoint")["finished"] and load_state(out / "checkpoint")["epoch"] == 2
    whole = tmp_path / "whole"
    whole_argv = ["--manifest", str(demo_manifest), "--out", str(whole), *TINY, *extra]
    whole_run = subprocess.run([*train, *whole_argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert whole_run.returncode == 0, whole_run.stderr[-2000:]
    final = load_state(out / "checkpoint")["weights"]
    for name in (f"checkpoint/{final}", "encoder.weights.h5"):
        resumed, uninterrupted = _arrays(out / name), _arrays(whole / name)
        assert resumed.keys() == uninterrupted.keys() and len(resumed) > 10
        for key in resumed:
            np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=f"{name}: {key}")
    # The record too: the interrupted epoch's loss is the mean over all its steps, as the whole run's.
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), pd.read_csv(whole / "history.csv"))


@pytest.mark.slow
def test_a_worker_waiting_for_its_peers_stops_on_sigterm_within_seconds(demo_manifest, tmp_path):
    mine, peer = (f"127.0.0.1:{port}" for port in free_ports(2))  # Nothing will listen on the peer's port.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CONFIG": json.dumps({"cluster": {"worker": [mine, peer]}, "task": {"type": "worker", "index": 0}}),
    }
    out = tmp_path / "run"
    train = str(ROOT / "genesis2d" / "train.py")
    command = [sys.executable, train, "--manifest", str(demo_manifest), "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert "listening on port" in process.stdout.readline()  # The default --cluster-timeout: 300 s.
    time.sleep(2)  # Into TensorFlow's wait.
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)  # As a scheduler does: to the job's processes.
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert stderr.strip().splitlines()[-1] == (
        "stopped by SIGTERM while waiting for the other workers; nothing was written."
    )
    assert not out.exists()
    time.sleep(1)
    watchers = subprocess.run(["pgrep", "-f", f"watch_cluster.*{peer}"], capture_output=True, text=True)
    assert watchers.stdout == ""


@pytest.mark.slow
def test_sigterm_stops_a_multi_worker_run_once_its_workers_met(tmp_path):
    """TensorFlow puts its own SIGTERM handler (a preemption notice that stops nothing) in while it sets workers up."""
    port = free_ports(1)[0]
    script = textwrap.dedent("""
        import os, signal, time
        import tensorflow as tf
        from genesis2d.strategy import start_multiworker
        from plumbing.cli import Terminated, sigterm_as_interrupt

        with sigterm_as_interrupt():
            start_multiworker(tf.distribute.cluster_resolver.TFConfigClusterResolver(), 60)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
                print("not stopped")
            except Terminated:
                print("stopped")
    """)
    config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(config)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1] == "stopped", result.stderr[-2000:]


SLOW_EXTRACTION = textwrap.dedent("""
    import sys, time
    import luna16.data as data

    extract = data._extract_scan_job

    def slow(job):  # Time to be stopped between subsets; the patches are untouched.
        time.sleep(0.3)
        return extract(job)

    data._extract_scan_job = slow
    data.main(sys.argv[1:])
""")


@pytest.mark.slow
def test_sigterm_stops_patch_extraction_keeping_finished_subsets(demo_dir, tmp_path):
    from luna16.data import extract_subsets
    from plumbing.atomic import TEMPORARY_PREFIX

    out = tmp_path / "patches"
    argv = ["--data", str(demo_dir / "LUNA16"), "--out", str(out), "--workers", "1", "--patch-size", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXTRACTION, *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    done = out / "subset0" / "done.json"
    deadline = time.monotonic() + 120
    while not done.is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "stopped by SIGTERM: run the same command again to continue; what it finished is kept."
    )
    assert not (out / ".lock").exists()
    assert not [path for path in out.rglob("*") if path.name.startswith(TEMPORARY_PREFIX)]
    assert not (out / "subset9" / "done.json").exists()
    kept = done.stat().st_mtime_ns
    counts = extract_subsets(demo_dir / "LUNA16", out, size=16, progress=False)
    assert done.stat().st_mtime_ns == kept and len(counts) == 10
    assert counts == extract_subsets(demo_dir / "LUNA16", tmp_path / "whole", size=16, progress=False)
