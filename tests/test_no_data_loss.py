"""No data loss (issue 9, item 0), on a tiny model and a corpus the test writes: a save deletes only
this run's retired checkpoints; a previous run is refused without --resume and resumed with it,
whatever its links are; ``last`` is never a diverged state; one training per run folder (lock);
metrics appended, never rewritten; temporaries of killed saves swept at start."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from memory_mosaics import cli
from memory_mosaics.experiments.language.evaluate import curves
from memory_mosaics.training import checkpoint as ckpt_mod
from memory_mosaics.training.checkpoint import MANIFEST_FILE, load_state, read_manifest, resolve_checkpoint
from memory_mosaics.training.loop import TrainingDiverged
from memory_mosaics.training.metrics import last_rows
from memory_mosaics.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


def config(corpus, **overrides):
    return tiny_train_config(corpus / "c.txt", cache_dir=str(corpus / "cache"), **overrides)


def train(corpus, out, resume=False, log=None, **overrides):
    trainer = Trainer(config(corpus, **overrides), out, resume=resume, log=log or (lambda msg: None))
    try:
        return trainer.fit()
    finally:
        trainer.close()


def steps_of(out, split="train"):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == split]


def listing(out):
    """Every path under ``out`` with its size (links as their targets): to show nothing changed."""
    out = Path(out)
    return {
        str(p.relative_to(out)): (os.readlink(p) if p.is_symlink() else p.stat().st_size if p.is_file() else "dir")
        for p in sorted(out.rglob("*"))
        if p.name != ckpt_mod.LOCK_FILE
    }


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
    """A finished 10-step run: ckpt-00000010 (last), best, metrics, config, manifest."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(corpus, out)
    return out


@pytest.fixture
def run_copy(base_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out, symlinks=True)
    return out


# ---------------------------------------------------------------------- 1. only this run's retired checkpoints
def test_a_save_deletes_only_checkpoints_this_run_wrote(corpus, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(config(corpus, max_steps=20, valid=""), out, log=lambda msg: None)
    for name in ("ckpt-my-finetune", "ckpt-00000099", "ckpt-00000010"):  # a user's folders, planted mid-run
        (out / name).mkdir()
        (out / name / "notes.txt").write_text(name)
    try:
        trainer.fit()
    finally:
        trainer.close()
    for name in ("ckpt-my-finetune", "ckpt-00000099", "ckpt-00000010"):
        assert (out / name / "notes.txt").read_text() == name  # untouched, even the one at a step we saved
    assert os.readlink(out / "last") == "ckpt-00000020"
    assert read_manifest(out)["checkpoints"] == ["ckpt-00000020"]
    # ours were retired: steps 5, 15 and the step-10 checkpoint written beside the user's folder
    assert not [p for p in ("ckpt-00000005", "ckpt-00000010-2", "ckpt-00000015") if (out / p).exists()]

    train(corpus, out, resume=True, max_steps=30, valid="")
    for name in ("ckpt-my-finetune", "ckpt-00000099", "ckpt-00000010"):
        assert (out / name / "notes.txt").read_text() == name
    assert os.readlink(out / "last") == "ckpt-00000030" and not (out / "ckpt-00000020").exists()


# ---------------------------------------------------------------------- 2. refused without --resume, resumed with it
def _remove_links(out):
    (out / "last").unlink()
    (out / "best").unlink()


def _dangling_last(out):
    (out / "last").unlink()
    os.symlink("ckpt-00000077", out / "last")


def _plain_file_last(out):
    (out / "last").unlink()
    (out / "last").write_text("not a link")


def _copied_links(out):  # what cp -L leaves: links turned into folders
    for link in ("last", "best"):
        target = out / os.readlink(out / link)
        (out / link).unlink()
        shutil.copytree(target, out / link)


def _no_state_in_newest(out):
    (out / "ckpt-00000010" / "state.pt").unlink()


def _only(name):
    def keep_only(out):
        for p in list(out.iterdir()):
            if p.name != name:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    keep_only.__name__ = f"only_{name}"
    return keep_only


@pytest.mark.parametrize(
    "damage",
    [
        _remove_links,
        _dangling_last,
        _plain_file_last,
        _copied_links,
        _no_state_in_newest,
        _only("metrics.jsonl"),
        _only("metrics.csv"),
        _only("train_config.json"),
        _only(MANIFEST_FILE),
        _only("ckpt-00000010"),
    ],
    ids=lambda f: f.__name__,
)
def test_a_previous_run_is_refused_without_resume(corpus, run_copy, damage):
    damage(run_copy)
    before = listing(run_copy)
    with pytest.raises(ValueError) as err:
        Trainer(config(corpus), run_copy)
    message = str(err.value)
    assert "\n" not in message and "holds a previous run" in message and "pass --resume" in message, message
    assert "--out" in message
    assert listing(run_copy) == before  # nothing written, nothing removed


def test_the_cli_refusal_is_one_line(corpus, run_copy, capsys):
    _remove_links(run_copy)
    args = ["train", "--data", str(corpus / "c.txt"), "--cache-dir", str(corpus / "cache"), "--out", str(run_copy)]
    assert cli.main([*args, "--tokenizer", "bpe:300", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a previous run" in err[0] and "ckpt-00000010" in err[0], err


@pytest.mark.parametrize("damage", [_remove_links, _dangling_last, _plain_file_last], ids=lambda f: f.__name__)
def test_resume_falls_back_to_the_newest_intact_checkpoint(corpus, run_copy, damage):
    damage(run_copy)
    logs = []
    summary = train(corpus, run_copy, resume=True, log=logs.append, max_steps=15)
    text = "\n".join(logs)
    assert "fell back to the newest intact checkpoint" in text and "ckpt-00000010" in text, text
    assert "resumed from" in text and "at step 10" in text
    assert summary["step"] == 15 and os.readlink(run_copy / "last") == "ckpt-00000015"
    if damage is _plain_file_last:
        moved = [p for p in run_copy.iterdir() if p.name.startswith("last.replaced-")]
        assert len(moved) == 1 and moved[0].read_text() == "not a link"  # moved aside, not deleted


def test_resume_skips_a_checkpoint_without_state(corpus, run_copy, base_run, tmp_path):
    # an older intact checkpoint beside the newest, whose state.pt is missing
    older = tmp_path / "older"
    train(corpus, older, max_steps=5)
    shutil.copytree(older / "ckpt-00000005", run_copy / "ckpt-00000005")
    _no_state_in_newest(run_copy)
    logs = []
    train(corpus, run_copy, resume=True, log=logs.append, max_steps=12)
    text = "\n".join(logs)
    assert "'last' is no state.pt" in text and "ckpt-00000005" in text and "at step 5" in text, text
    assert load_state(resolve_checkpoint(run_copy))["step"] == 12


def _wrong_typed_state(out):
    torch.save([1, 2], out / "ckpt-00000010" / "state.pt")
    ckpt_mod.write_checkpoint_manifest(out / "ckpt-00000010", 10, "mosaic")  # consistent files, wrong content


def _state_without_optimizer(out):
    state = load_state(out / "ckpt-00000010")
    del state["optimizer"]
    torch.save(state, out / "ckpt-00000010" / "state.pt")
    ckpt_mod.write_checkpoint_manifest(out / "ckpt-00000010", 10, "mosaic")


def _truncated_weights(out):
    with open(out / "ckpt-00000010" / "model.safetensors", "r+b") as f:
        f.truncate(100)


def _flipped_byte_in_state(out):
    path = out / "ckpt-00000010" / "state.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_wrong_typed_state, _state_without_optimizer, _truncated_weights, _flipped_byte_in_state, _no_state_in_newest],
    ids=lambda f: f.__name__,
)
def test_resume_with_every_checkpoint_damaged_is_refused_and_changes_nothing(corpus, run_copy, damage):
    damage(run_copy)
    before = listing(run_copy)
    with pytest.raises(ValueError) as err:
        Trainer(config(corpus), run_copy, resume=True, log=lambda m: None)
    message = str(err.value)
    assert "\n" not in message and "no checkpoint is intact (ckpt-00000010)" in message, message
    assert "nothing was changed" in message
    assert listing(run_copy) == before  # never "starting from scratch", which would retire the damaged checkpoint


def test_a_copy_with_links_turned_into_folders_resumes(corpus, run_copy):
    _copied_links(run_copy)
    logs = []
    train(corpus, run_copy, resume=True, log=logs.append, max_steps=15)
    assert any("resumed from" in m and "at step 10" in m for m in logs), logs
    assert (run_copy / "last").is_symlink() and os.readlink(run_copy / "last") == "ckpt-00000015"
    moved = [p for p in run_copy.iterdir() if ".replaced-" in p.name]
    assert "last" in {p.name.split(".")[0] for p in moved}  # the copied folders are moved aside, not deleted
    assert all(load_state(p)["step"] == 10 for p in moved)
    assert (run_copy / "best" / "model.safetensors").is_file()


# ---------------------------------------------------------------------- 3. last good checkpoint
def test_weights_that_are_not_finite_are_never_checkpointed(corpus, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(config(corpus, max_steps=6, checkpoint_interval=1, valid=""), out, log=lambda m: None)
    step = trainer.train_step

    def poisoned():
        result = step()
        if trainer.step == 3:  # the optimiser step left a weight infinite while its loss was finite
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")
        return result

    trainer.train_step = poisoned
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    trainer.close()
    message = str(err.value)
    assert "are not finite" in message and "after step 3" in message and "ckpt-00000002" in message, message
    assert not (out / "ckpt-00000003").exists() and os.readlink(out / "last") == "ckpt-00000002"
    assert all(torch.isfinite(t).all() for t in load_file(out / "last" / "model.safetensors").values())


def test_a_huge_learning_rate_never_points_last_at_diverged_weights(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as err:
        train(corpus, out, max_steps=20, checkpoint_interval=1, lr=1e30, warmup=0, valid="")
    message = str(err.value)  # lr = 1e30: step 1 leaves weights ~1e30 (finite), step 2's loss is not finite
    assert "at step 2" in message and "last good checkpoint is kept" in message and "ckpt-00000001" in message
    assert os.readlink(out / "last") == "ckpt-00000001" and not (out / "ckpt-00000002").exists()
    assert all(torch.isfinite(t).all() for t in load_file(out / "last" / "model.safetensors").values())


@pytest.mark.parametrize("field", ["lr", "min_lr", "weight_decay", "grad_clip", "dropout"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_the_config_refuses_non_finite_numbers_from_python(corpus, field, value):
    with pytest.raises(ValueError, match=f"{field} .* must be a finite number"):
        config(corpus, **{field: value})


# ---------------------------------------------------------------------- 4. one training per run folder
def test_a_second_trainer_on_the_same_out_is_refused_with_the_holders_pid(corpus, tmp_path):
    out = tmp_path / "run"
    first = Trainer(config(corpus, max_steps=2), out, log=lambda m: None)
    with pytest.raises(ValueError, match=f"in use by another training \\(pid {os.getpid()}") as err:
        Trainer(config(corpus, max_steps=2), out, resume=True)
    assert "\n" not in str(err.value)
    first.fit()
    first.close()
    train(corpus, out, resume=True, max_steps=3)  # released: the folder can be taken again


def test_the_lock_names_another_process(corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from memory_mosaics.training.checkpoint import RunLock; "
            "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            Trainer(config(corpus), out)
    finally:
        holder.kill()
        holder.wait()
    train(corpus, out, max_steps=1)  # the lock died with its holder


# ---------------------------------------------------------------------- 5. metrics appended, never rewritten
def test_metrics_are_appended_and_readers_take_the_last_row_per_step(corpus, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(config(corpus, max_steps=8), out, log=lambda m: None)
    step = trainer.train_step

    def crash_after_7():
        if trainer.step == 7:
            raise KeyboardInterrupt  # killed after logging step 7; the newest checkpoint is step 5
        return step()

    trainer.train_step = crash_after_7
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer.close()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "spl')  # a row cut by the kill
    before = (out / "metrics.jsonl").read_text()
    csv_before = (out / "metrics.csv").read_text()

    resumed = Trainer(config(corpus, max_steps=8), out, resume=True, log=lambda m: None)
    assert (out / "metrics.jsonl").read_text() == before + "\n"  # opening the log only ends the cut line
    resumed.fit()
    resumed.close()
    text = (out / "metrics.jsonl").read_text()
    assert text.startswith(before)
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6, 7, 6, 7, 8]
    assert [r["step"] for r in last_rows(rows) if r["split"] == "train"] == list(range(1, 9))
    csv_text = (out / "metrics.csv").read_text()
    assert csv_text.startswith(csv_before) and csv_text.count("step,split") == 1
    assert len(csv_text.splitlines()) == 1 + 10 + 4  # header, train rows, valid and diagnostics rows (steps 5, 8)
    assert [tokens for tokens, _ in curves(out)["train"]] == [s * 2 * 16 for s in range(1, 9)]


# ---------------------------------------------------------------------- 6. temporaries swept at start
def test_temporaries_of_killed_saves_are_swept_and_nothing_else(corpus, run_copy):
    ours = [".tmp-ckpt-00000015.4242", ".last.tmp.4242", f".{MANIFEST_FILE}.ab12.tmp", ".train_config.json.x.tmp"]
    (run_copy / ours[0]).mkdir()
    (run_copy / ours[0] / "model.safetensors").write_bytes(b"partial")
    os.symlink("ckpt-00000010", run_copy / ours[1])
    for name in ours[2:]:
        (run_copy / name).write_text("partial")
    theirs = [".tmp-notes", ".last.txt", "scratch.tmp", ".metrics.jsonl.bak.tmp"]
    for name in theirs:
        (run_copy / name).write_text("mine")
    logs = []
    trainer = Trainer(config(corpus, max_steps=10), run_copy, resume=True, log=logs.append)
    trainer.close()
    assert not [name for name in ours if os.path.lexists(run_copy / name)]
    assert all((run_copy / name).read_text() == "mine" for name in theirs)
    assert any("removed 4 temporary file(s)" in m for m in logs), logs


def test_a_failed_save_leaves_no_partial_folder_and_keeps_the_last_checkpoint(corpus, run_copy, monkeypatch):
    trainer = Trainer(config(corpus, max_steps=15), run_copy, resume=True, log=lambda m: None)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    trainer.close()
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".tmp-ckpt-")]
    assert os.readlink(run_copy / "last") == "ckpt-00000010" and load_state(run_copy / "last")["step"] == 10
    assert "ckpt-00000010" in read_manifest(run_copy)["checkpoints"]


def test_the_manifest_lists_the_kept_checkpoints(base_run):
    manifest = json.loads((base_run / MANIFEST_FILE).read_text())
    assert manifest["last"] == "ckpt-00000010" and "ckpt-00000010" in manifest["checkpoints"]
    assert not [p for p in base_run.iterdir() if p.name.startswith(".")]  # no temporary left beside it


def test_an_unreadable_manifest_is_refused_before_any_work(corpus, run_copy):
    (run_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="run_manifest.json is unreadable") as err:
        Trainer(config(corpus, max_steps=15), run_copy, resume=True)
    assert "\n" not in str(err.value) and (run_copy / "ckpt-00000010" / "state.pt").is_file()
