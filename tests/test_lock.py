"""One writer per output folder (`plumbing.lock.output_lock`) under a crowd, a kill, a full disk and a shared disk."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from plumbing.errors import UsageError
from plumbing.lock import LOCK_FILE, output_lock

# Trials of processes entering one folder's lock together, a lock left by a dead process in it (a requeued Slurm
# array after a killed job): each holder counts itself in and out of a shared counter, which must never pass 1. Run
# in a fresh interpreter, where forking is safe (no TensorFlow threads).
_CROWD = """
import json, multiprocessing as mp, os, socket, sys, time
from pathlib import Path
from plumbing.errors import UsageError
from plumbing.lock import LOCK_FILE, output_lock

def enter(folder, barrier, inside, most, won, wait):
    barrier.wait()
    try:
        with output_lock(folder, wait=wait):
            with inside.get_lock():
                inside.value += 1
                most.value = max(most.value, inside.value)
            time.sleep(0.005)
            with inside.get_lock():
                inside.value -= 1
        with won.get_lock():
            won.value += 1
    except UsageError:
        pass

root, trials, crowd, dead = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
wait = sys.argv[5:] == ["wait"]
mp.set_start_method("fork")
most, wins = 0, []
for trial in range(trials):
    folder = root / str(trial)
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    barrier, inside = mp.Barrier(crowd), mp.Value("i", 0)
    top, won = mp.Value("i", 0), mp.Value("i", 0)
    workers = [mp.Process(target=enter, args=(folder, barrier, inside, top, won, wait)) for _ in range(crowd)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    most, wins = max(most, top.value), wins + [won.value]
    assert not (folder / LOCK_FILE).exists(), folder
print(json.dumps({"most": most, "wins": wins}))
"""


def _dead_pid():
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_crowd_on_a_stale_lock_never_gives_two_holders(tmp_path):
    """100 trials of 6 processes at once on a folder whose lock a dead process left: one holder at a time in every
    trial, at least one winner, and no lock left when all are done. (Check, unlink and create let 6 in at once.)"""
    run = subprocess.run(
        [sys.executable, "-c", _CROWD, str(tmp_path), "100", "6", str(_dead_pid())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["most"] == 1
    assert min(result["wins"]) >= 1 and len(result["wins"]) == 100


def test_a_crowd_that_waits_takes_the_lock_in_turn(tmp_path):
    """The study's array tasks wait for a shared step's lock: 6 processes at once on a stale lock, 30 trials, each
    process holds it once and never beside another."""
    run = subprocess.run(
        [sys.executable, "-c", _CROWD, str(tmp_path), "30", "6", str(_dead_pid()), "wait"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["most"] == 1 and result["wins"] == [6] * 30


def test_a_waiter_says_whom_it_waits_for_and_takes_the_lock_when_its_holder_dies(tmp_path, capsys):
    code = "import sys, time\nfrom plumbing.lock import output_lock\nwith output_lock(sys.argv[1]):\n"
    code += "    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    killer = __import__("threading").Timer(1.0, os.kill, (holder.pid, signal.SIGKILL))
    killer.start()
    with output_lock(tmp_path, wait=True):  # Asleep until the kernel drops the killed holder's lock.
        assert holder.poll() is not None or holder.wait(5) == -signal.SIGKILL
    killer.join()
    out = capsys.readouterr().out
    assert f"waiting for process {holder.pid} on {socket.gethostname()} to release {tmp_path / LOCK_FILE}" in out
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_killed_holder_leaves_a_lock_the_next_run_takes_with_a_line(tmp_path, capsys):
    code = "import sys, time\nfrom plumbing.lock import output_lock\nwith output_lock(sys.argv[1]):\n"
    code += "    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"is in use by process {holder.pid} on {socket.gethostname()}"):
        with output_lock(tmp_path):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # Its file stays; its lock does not.
    with output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert f"was left by process {holder.pid}, which no longer runs; taking it over" in capsys.readouterr().out
    assert not (tmp_path / LOCK_FILE).exists()


def test_an_empty_lock_file_does_not_block_later_runs(tmp_path, capsys):
    """A process killed between creating its lock file and writing it, or a disk that was full, leaves it empty."""
    (tmp_path / LOCK_FILE).write_text("")
    with output_lock(tmp_path):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_full_disk_names_the_lock_file_and_leaves_no_lock(tmp_path, monkeypatch):
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UsageError) as error:
        with output_lock(tmp_path / "out"):
            raise AssertionError("the block must not run")
    assert str(error.value) == f"{tmp_path / 'out' / LOCK_FILE}: cannot be written (No space left on device)."
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()  # The folder it made is gone, lock and all.
    with output_lock(tmp_path / "out"):
        pass


def test_a_lock_of_another_machine_is_never_taken_over(tmp_path):
    """On a shared disk the other machine's lock may not reach here: its file is the word, and the line names it."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "node-17"}))
    with pytest.raises(UsageError) as error:
        with output_lock(tmp_path):
            pass
    assert f"is in use by process 4242 on node-17 (its lock {tmp_path / LOCK_FILE})" in str(error.value)
    assert "remove the lock if that run is over" in str(error.value)
    assert (tmp_path / LOCK_FILE).exists()
