"""lm-evaluation-harness: the ``mosaics`` model's scores against direct computation, and the command
lines (``mosaics lm-eval`` and lm_eval's own CLI) on small offline tasks this file writes."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from memory_mosaics import MosaicConfig, MosaicLM, cli  # noqa: E402
from memory_mosaics.data.tokenizers import train_bpe  # noqa: E402
from memory_mosaics.hf.harness import MosaicsLM  # noqa: E402

DOCS = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot today"] * 30
CHOICES = [
    ("the cat sat on the", ["mat", "sun", "dog"], 0),
    ("a dog ran in the", ["park", "cat"], 0),
    ("the sun is", ["hot", "mat"], 1),
]  # lm_eval asks for log p(" " + choice | question): its default target delimiter is a space


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    tok = train_bpe(DOCS, vocab_size=300)
    torch.manual_seed(0)
    MosaicLM(MosaicConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).save_pretrained(folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Three task YAMLs (multiple choice, generation, rolling loglikelihood) over local JSONL files."""
    d = tmp_path_factory.mktemp("tasks")
    rows = {
        "choice": [{"question": q, "choices": c, "answer": a} for q, c, a in CHOICES],
        "gen": [{"prompt": "the cat sat on", "target": " the mat"}, {"prompt": "a dog", "target": " ran"}],
        "roll": [{"text": "the cat sat on the mat"}, {"text": "the sun is hot"}],
    }
    for name, docs in rows.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    common = f"dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {d}/{{name}}.jsonl\n"
    specs = {
        "choice": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n",
        "gen": "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 5\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n",
        "roll": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n",
    }
    for name, spec in specs.items():
        (d / f"{name}.yaml").write_text(f"task: mm_{name}\n" + common.format(name=name) + spec)
    return d


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_equals_direct_scoring_batched_or_not(checkpoint):
    one, three = MosaicsLM(str(checkpoint), batch_size=1), MosaicsLM(str(checkpoint), batch_size=3)
    reqs = [request("loglikelihood", q, " " + c) for q, cs, _ in CHOICES for c in cs]
    scores = one.loglikelihood(reqs)
    batched = three.loglikelihood(reqs)
    assert [g for _, g in scores] == [g for _, g in batched]
    assert [ll for ll, _ in scores] == pytest.approx([ll for ll, _ in batched], abs=1e-4)
    tok, model = one.tokenizer, one.model
    for (ll, greedy), r in zip(scores, reqs):
        ctx, cont = [tok.eot_id, *tok.encode(r.args[0])], tok.encode(r.args[1])
        seq = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[:, :-1]), -1)[0, len(ctx) - 1 :]
        assert ll == pytest.approx(logp.gather(1, torch.tensor(cont)[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((logp.argmax(-1) == torch.tensor(cont)).all())


def test_rolling_loglikelihood_is_the_whole_text_after_end_of_text(checkpoint):
    lm = MosaicsLM(str(checkpoint))
    text = "the dog sat on the mat"
    ids = [lm.tokenizer.eot_id, *lm.tokenizer.encode(text)]
    with torch.no_grad():
        _, loss = lm.model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert total == pytest.approx(-loss.item() * (len(ids) - 1), rel=1e-5)


def test_generate_until_equals_one_by_one_package_generate(checkpoint):
    lm = MosaicsLM(str(checkpoint), batch_size=3)
    prompts = ["the cat", "a dog ran in the park and", "the"]
    kwargs = {"until": ["park"], "max_gen_toks": 8, "do_sample": False}
    outs = lm.generate_until([request("generate_until", p, kwargs) for p in prompts])
    tok = lm.tokenizer
    for p, out in zip(prompts, outs):
        ids = torch.tensor([[tok.eot_id, *tok.encode(p)]])
        new = lm.model.generate(ids, 8, temperature=0, eos_token=tok.eot_id)[0, ids.shape[1] :].tolist()
        new = new[: new.index(tok.eot_id)] if tok.eot_id in new else new
        assert out == tok.decode(new).split("park")[0]


def test_mosaics_lm_eval_scores_offline_tasks(checkpoint, tasks, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "res.json"
    argv = ["lm-eval", "--checkpoint", str(checkpoint), "--tasks", "mm_choice,mm_roll", "mm_gen"]
    assert cli.main([*argv, "--include-path", str(tasks), "--batch-size", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    lm = MosaicsLM(str(checkpoint))
    right = 0
    for q, cs, answer in CHOICES:
        scores = [ll for ll, _ in lm.loglikelihood([request("loglikelihood", q, " " + c) for c in cs])]
        right += int(max(range(len(cs)), key=scores.__getitem__) == answer)
    assert results["mm_choice"]["acc,none"] == pytest.approx(right / len(CHOICES))
    assert results["mm_roll"]["word_perplexity,none"] > 1
    assert "exact_match,none" in results["mm_gen"]
    assert "mm_choice" in capsys.readouterr().out


def test_mosaics_lm_eval_refuses_unknown_tasks(checkpoint, capsys):
    assert cli.main(["lm-eval", "--checkpoint", str(checkpoint), "--tasks", "no_such_task"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mosaics: error: unknown lm-eval task(s): no_such_task (see `lm_eval ls tasks`, or --include-path)"
    )


def test_lm_eval_command_line_scores_a_checkpoint(checkpoint, tasks, tmp_path):
    """lm_eval's own CLI (``--model mosaics``) through ``python -m memory_mosaics.hf.harness``."""
    cmd = [sys.executable, "-m", "memory_mosaics.hf.harness", "--model", "mosaics"]
    cmd += ["--model_args", f"pretrained={checkpoint}", "--tasks", "mm_choice", "--include_path", str(tasks)]
    cmd += ["--output_path", str(tmp_path / "out"), "--device", "cpu"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = (tmp_path / "out").rglob("results_*.json")
    assert 0 <= json.loads(result.read_text())["results"]["mm_choice"]["acc,none"] <= 1
    assert "mm_choice" in run.stdout


def test_lm_eval_hf_model_scores_a_converted_folder_with_remote_code(checkpoint, tasks, tmp_path):
    """The ``lm_eval`` program's own ``hf`` model on ``mosaics convert``'s folder (AutoTokenizer +
    trust_remote_code): the rolling perplexity equals the ``mosaics`` model's."""
    from memory_mosaics.hf.convert import to_hf

    to_hf(checkpoint, tmp_path / "hf")
    program = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    cmd = [program, "--model", "hf", "--model_args", f"pretrained={tmp_path / 'hf'},trust_remote_code=True"]
    cmd += ["--tasks", "mm_roll", "--include_path", str(tasks), "--output_path", str(tmp_path / "out")]
    cmd += ["--device", "cpu", "--batch_size", "2"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(result.read_text())["results"]["mm_roll"]["word_perplexity,none"]
    lm = MosaicsLM(str(checkpoint))
    texts = [json.loads(line)["text"] for line in (tasks / "roll.jsonl").read_text().splitlines()]
    total = sum(lm.loglikelihood_rolling([request("loglikelihood_rolling", t) for t in texts]))
    ours = float(torch.exp(torch.tensor(-total / sum(len(t.split()) for t in texts))))
    assert theirs == pytest.approx(ours, rel=1e-4)
