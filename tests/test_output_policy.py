"""The output-folder policy against runs that race and names built to look like ours: two
runs on one --out (one wins, the other is refused, nothing merges), and the stale-temp sweep
(only this program's marked temps of dead runs go). No torch: the policy is plain files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vqgen.stage1_vqvae.runtime.fsutil import TEMP_MARK, atomic_dir, make_temp_dir
from vqgen.stage1_vqvae.runtime.outputs import (
    OutputError,
    claim_output_dir,
    owned_output_dir,
    release_output_locks,
)

# one run of a verb: claim --out, "work" (sleep), write its file and manifest; exit 2 if refused
RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vqgen.stage1_vqvae.runtime.outputs import (
        OutputError, claim_output_dir, manifest_files, owned_output_dir)
    out, name, work = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    try:
        owned = manifest_files(out, "m.json") if out.is_dir() else set()
        claim_output_dir(out, verb="t", overwrite=False, owned=owned, writes=lambda n: True)
    except OutputError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    print("claimed", flush=True)
    time.sleep(work)
    with owned_output_dir(out, "m.json") as tmp:
        (tmp / "who.txt").write_text(name)
""")


def start_run(out: Path, name: str, work: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(out), name, str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "empty-out"])
def test_two_runs_on_one_out_one_wins_the_other_is_refused(tmp_path: Path, existing: bool):
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        if existing:
            out.mkdir()
        runs = [start_run(out, name, 0.3) for name in ("a", "b")]
        results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in runs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        winner = "ab"[[code for code, _, _ in results].index(0)]
        loser_err = next(err for code, _, err in results if code == 2)
        assert "being written by another vqgen run" in loser_err, loser_err
        assert (out / "who.txt").read_text() == winner
        assert sorted(p.name for p in out.iterdir()) == ["m.json", "who.txt"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")], \
            "a lock or temp was left beside --out"


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path):
    out = tmp_path / "out"
    holder = start_run(out, "a", 60)
    assert holder.stdout.readline().strip() == "claimed"
    with pytest.raises(OutputError, match="being written by another vqgen run"):
        claim_output_dir(out, verb="t", overwrite=False, owned=set(), writes=lambda n: True)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    claim_output_dir(out, verb="t", overwrite=False, owned=set(), writes=lambda n: True)
    with owned_output_dir(out, "m.json") as tmp:
        (tmp / "who.txt").write_text("me")
    release_output_locks()
    assert (out / "who.txt").read_text() == "me"


def test_a_run_that_finished_first_is_not_merged_over(tmp_path: Path):
    """The second run claims only after the first landed: it sees the output and is refused."""
    out = tmp_path / "out"
    first = start_run(out, "a", 0)
    assert first.wait(timeout=60) == 0
    second = start_run(out, "b", 0)
    assert second.wait(timeout=60) == 2
    assert (out / "who.txt").read_text() == "a"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_stale_sweep_removes_only_our_marked_temps_of_dead_runs(tmp_path: Path):
    pid = dead_pid()
    # the user's own files that merely look like temp names: kept, byte for byte
    user_file = tmp_path / ".samples.20240101.tmp.txt"
    user_file.write_text("mine")
    user_dir = tmp_path / ".samples.7777777.backup.tmp"
    user_dir.mkdir()
    (user_dir / "keep.txt").write_text("mine too")
    lookalike = tmp_path / f".samples.vqgen-{pid}.abcdefgh.tmp"  # our form, but not marked
    lookalike.mkdir()
    (lookalike / "x").write_text("unmarked")
    # a dead run's real temp folder (made by a process that is gone): removed
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from vqgen.stage1_vqvae.runtime.fsutil import make_temp_dir; "
         "print(make_temp_dir(Path(sys.argv[1])))", str(tmp_path / "samples")],
        capture_output=True, text=True, check=True)
    dead = Path(child.stdout.strip())
    assert (dead / TEMP_MARK).is_file()
    # a live process's temp (this one's parent): kept
    live = tmp_path / f".samples.vqgen-{os.getppid()}.abcdefgh.tmp"
    live.mkdir()
    (live / TEMP_MARK).touch()
    with atomic_dir(tmp_path / "samples") as tmp:
        (tmp / "grid.png").write_bytes(b"png")
    assert not dead.exists()
    assert user_file.read_text() == "mine" and (user_dir / "keep.txt").read_text() == "mine too"
    assert (lookalike / "x").read_text() == "unmarked" and live.is_dir()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["grid.png"]


def test_temp_folders_are_marked_and_the_mark_never_lands(tmp_path: Path):
    tmp = make_temp_dir(tmp_path / "x")
    assert (tmp / TEMP_MARK).is_file() and tmp.name.startswith(".x.vqgen-")
    with owned_output_dir(tmp_path / "out", "m.json") as t:
        (t / "a.txt").write_text("1")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "m.json"]


@pytest.mark.parametrize("node", ["fifo", "/dev/null"])
def test_a_device_or_fifo_is_never_replaced_even_with_overwrite(tmp_path: Path, node: str):
    import stat

    from vqgen.stage1_vqvae.runtime.outputs import check_output_file

    if node == "fifo":
        path = tmp_path / "report.json"
        os.mkfifo(path)
    else:
        path = Path(node)
    before = path.stat()
    with pytest.raises(OutputError, match="not a regular file"):
        check_output_file(path, overwrite=True, flag="--report")
    with pytest.raises(OutputError, match="expected a folder"):
        claim_output_dir(path, verb="t", overwrite=True, owned=set(), writes=lambda n: True)
    after = path.stat()
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and not stat.S_ISREG(
        after.st_mode)
    release_output_locks()


def test_a_merge_replaces_only_listed_files_in_subfolders(tmp_path: Path):
    out = tmp_path / "out"
    with owned_output_dir(out, "m.json") as t:  # a first run: dd/7/a.png, dd/old.png, x/y.png
        for rel in ("dd/7/a.png", "dd/old.png", "x/y.png"):
            (t / rel).parent.mkdir(parents=True, exist_ok=True)
            (t / rel).write_text("run 1")
    (out / "dd" / "7" / "mine.txt").write_text("mine")  # the user's, inside our subfolder
    with owned_output_dir(out, "m.json") as t:  # a second run writes dd/7/a.png only
        (t / "dd" / "7").mkdir(parents=True)
        (t / "dd" / "7" / "a.png").write_text("run 2")
    assert (out / "dd" / "7" / "a.png").read_text() == "run 2"
    assert (out / "dd" / "7" / "mine.txt").read_text() == "mine"
    assert not (out / "dd" / "old.png").exists() and not (out / "x").exists()  # pruned
    import json
    assert json.loads((out / "m.json").read_text())["files"] == ["dd/7/a.png"]
    # a run that would write over the user's file: refused before anything moves
    with pytest.raises(OutputError, match="dd/7/mine.txt"):
        with owned_output_dir(out, "m.json") as t:
            (t / "dd" / "7").mkdir(parents=True)
            (t / "dd" / "7" / "a.png").write_text("run 3")
            (t / "dd" / "7" / "mine.txt").write_text("run 3")
    assert (out / "dd" / "7" / "mine.txt").read_text() == "mine"
    assert (out / "dd" / "7" / "a.png").read_text() == "run 2"
    assert json.loads((out / "m.json").read_text())["files"] == ["dd/7/a.png"]
