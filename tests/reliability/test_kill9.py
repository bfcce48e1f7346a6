"""kill -9 at random points of a conversion and of a batch, then re-run: the final outputs are
byte-identical to an uninterrupted run, and no partial output is ever visible under the final name.

Delays are drawn from a seeded generator over the measured length of an uninterrupted run, so the
kills land at different phases (planning, mid-shard, between shards, manifest, rename).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from rel_util import tree_bytes

from lowbit.batch.outputs import output_state
from lowbit.synth import write_synthetic

KILLS = 6


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """~64 MB of BF16 in 2 MB shards: long enough (about 1 s to convert) for kills to land inside."""
    return write_synthetic(tmp_path_factory.mktemp("big") / "llama-48l", "llama", preset="tiny",
                           layers=48, max_shard_size="2MB", seed=5)


class Watcher(threading.Thread):
    """Polls output paths; whenever one exists it must be a complete, verified output."""

    def __init__(self, outputs: list[Path]):
        super().__init__(daemon=True)
        self.outputs, self.stop, self.bad, self.seen = outputs, threading.Event(), [], 0

    def run(self):
        while not self.stop.is_set():
            for out in self.outputs:
                if out.exists():
                    self.seen += 1
                    state = output_state(out)
                    if not state.complete and out.exists():
                        self.bad.append(f"{out}: {state.kind} {state.reason}")
            time.sleep(0.005)


def _quantize_cmd(src: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "lowbit", "quantize", str(src), "-o", str(out), "--scheme", "nvfp4",
            "--max-shard-size", "1MB", "--device", "cpu", "--quiet", *extra]


def _journal_count(journal: Path) -> int:
    try:
        return len(json.loads(journal.read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _kill_when(cmd: list[str], journal: Path, shards: int, delay: float) -> int:
    """Start cmd; once the journal holds `shards` finished shards, wait `delay` s, then kill -9."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while shards and proc.poll() is None and _journal_count(journal) < shards \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_kill9_conversion_then_resume_is_byte_identical(big_source, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_quantize_cmd(big_source, ref), check=True, capture_output=True, timeout=300)
    n_shards = len(list(ref.glob("*.safetensors")))
    rng = random.Random(1234)
    out = tmp_path / "out"
    journal = tmp_path / "out.lowbit-partial" / ".lowbit-journal.json"
    watcher = Watcher([out])
    watcher.start()
    killed_mid = 0
    # kill points: start-up / planning (pure delays), then after a random number of finished shards
    # plus a random delay (mid-shard, between shards), whatever the machine's speed
    for i in range(KILLS):
        if i < 2:
            target, delay = 0, rng.uniform(0.05, 0.6)
        else:
            target = min(_journal_count(journal) + rng.randint(1, 4), n_shards - 1)
            delay = rng.uniform(0, 0.02)
        code = _kill_when(_quantize_cmd(big_source, out), journal, target, delay)
        assert not out.exists() or output_state(out).complete
        if out.exists():  # the kill came after the rename: complete; start over to go on killing
            assert tree_bytes(out) == tree_bytes(ref)
            gone = tmp_path / f"gone-{i}"
            os.rename(out, gone)  # atomically: the watcher must not see a half-deleted OUT
            shutil.rmtree(gone)
        elif i >= 2:
            killed_mid += code == -signal.SIGKILL
    if not out.exists():
        subprocess.run(_quantize_cmd(big_source, out), check=True, capture_output=True, timeout=300)
    watcher.stop.set()
    watcher.join()
    assert watcher.bad == [] and watcher.seen > 0
    assert killed_mid >= 3  # the shard-triggered kills land inside the conversion
    assert tree_bytes(out) == tree_bytes(ref)
    assert not (tmp_path / "out.lowbit-partial").exists()


def test_kill9_mid_shards_resumes_at_shard_level(big_source, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_quantize_cmd(big_source, ref), check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    journal = tmp_path / "out.lowbit-partial" / ".lowbit-journal.json"
    proc = subprocess.Popen(_quantize_cmd(big_source, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 60
    while done < 3 and time.monotonic() < deadline and proc.poll() is None:
        try:
            done = len(json.loads(journal.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 3 and not out.exists()
    r = subprocess.run(_quantize_cmd(big_source, out, "--json"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    total = len(list(ref.glob("*.safetensors")))
    assert done <= json.loads(r.stdout)["resumed_shards"] < total  # resumed, not redone from scratch
    assert tree_bytes(out) == tree_bytes(ref)


def _batch_toml(root: Path, src: Path, small: Path) -> Path:
    p = root / "batch.toml"
    p.write_text(f'output_root = "{root / "out"}"\nworkers = 2\nmax_shard_size = "1MB"\n'
                 f'device = "cpu"\ngroup_size = 32\nverify = false\n'
                 f'[[job]]\nsource = "{src}"\nschemes = ["fp8-block", "nvfp4", "int4"]\n'
                 f'[[job]]\nsource = "{small}"\nschemes = ["nvfp4", "int4"]\n')
    return p


def _batch(toml: Path, **kw):
    return subprocess.Popen([sys.executable, "-m", "lowbit", "batch", str(toml), "--quiet", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)


def _outputs(root: Path) -> dict[str, dict[str, bytes]]:
    out = root / "out"
    return {p.name: tree_bytes(p) for p in sorted(out.iterdir())
            if p.is_dir() and not p.name.endswith((".lowbit-partial", ".rejected"))}


def test_kill9_batch_then_rerun_is_byte_identical(big_source, tiny_llama, tmp_path):
    ref_root = tmp_path / "ref"
    ref_root.mkdir()
    t0 = time.monotonic()
    r = _batch(_batch_toml(ref_root, big_source, tiny_llama))
    ref_report = json.loads(r.communicate(timeout=300)[0])
    full = time.monotonic() - t0
    assert r.returncode == 0 and ref_report["ok"] == 5
    root = tmp_path / "run"
    root.mkdir()
    toml = _batch_toml(root, big_source, tiny_llama)
    names = [Path(j["output"]).name for j in ref_report["jobs"]]
    watcher = Watcher([root / "out" / n for n in names])
    watcher.start()
    rng = random.Random(99)
    interrupted = 0
    for _ in range(KILLS):
        proc = _batch(toml)
        time.sleep(rng.uniform(0.3, 0.6 * full))
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        # the workers die with the batch (PR_SET_PDEATHSIG): no orphan keeps writing
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], alive
        interrupted += not all(output_state(root / "out" / n).complete for n in names)
    proc = _batch(toml)
    final = json.loads(proc.communicate(timeout=300)[0])
    watcher.stop.set()
    watcher.join()
    assert proc.returncode == 0
    assert watcher.bad == []
    assert interrupted >= 2  # kills left work unfinished
    assert {j["status"] for j in final["jobs"]} <= {"ok", "skipped"}
    assert _outputs(root) == _outputs(ref_root)
    assert not list((root / "out").glob("*.lowbit-partial"))


@pytest.mark.parametrize("phase", ["workers starting", "converting"])
def test_ctrl_c_batch_stops_cleanly_and_resumes(big_source, tiny_llama, tmp_path, phase):
    root = tmp_path / "run"
    root.mkdir()
    toml = _batch_toml(root, big_source, tiny_llama)
    proc = subprocess.Popen([sys.executable, "-m", "lowbit", "batch", str(toml), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60

    def started() -> bool:
        if phase == "workers starting":
            return bool(psutil.Process(proc.pid).children())
        return bool(list((root / "out").glob("*.lowbit-partial")))  # a conversion is under way

    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert proc.poll() is None  # still running: the interrupt lands mid-batch
    children = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "lowbit: interrupted" and "Traceback" not in err, err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    report = json.loads((root / "out" / "batch-report.json").read_text())
    assert any("interrupted" in (j["error"] or "") for j in report["jobs"])
    proc = _batch(toml)
    final = json.loads(proc.communicate(timeout=300)[0])
    assert proc.returncode == 0 and {j["status"] for j in final["jobs"]} <= {"ok", "skipped"}


def test_second_writer_to_same_output_is_refused(big_source, tmp_path):
    """Two `lowbit quantize` runs into one OUT: the second is refused while the first writes (without
    the lock, the first published shards the second was rewriting: lowbit.json did not match)."""
    ref = tmp_path / "ref"
    subprocess.run(_quantize_cmd(big_source, ref), check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    journal = tmp_path / "out.lowbit-partial" / ".lowbit-journal.json"
    first = subprocess.Popen(_quantize_cmd(big_source, out), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not journal.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # frozen mid-conversion, holding its lock
    try:
        second = subprocess.run(_quantize_cmd(big_source, out), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2 and "another lowbit process is writing this output" in second.stderr
    assert output_state(out).complete and tree_bytes(out) == tree_bytes(ref)
    assert not (tmp_path / "out.lowbit-lock").exists()
