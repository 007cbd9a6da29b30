"""transformers integration: Auto* loading, logits and generate equal to the native models, the
memories as generate's cache (ragged left-padded batches, beam search), conversion both ways and the
trust_remote_code folder (loaded in a subprocess where memory_mosaics cannot be imported)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM  # noqa: E402
from memory_mosaics.hf.cache import MosaicCache, select_rows  # noqa: E402
from memory_mosaics.hf.configuration import MosaicHFConfig, hf_config  # noqa: E402
from memory_mosaics.hf.convert import from_hf, is_hf_folder, load_hf, to_hf  # noqa: E402
from memory_mosaics.hf.modeling import GPTForCausalLM, MosaicForCausalLM, token_spans  # noqa: E402
from memory_mosaics.hf.remote import bundle_sources  # noqa: E402

V = 61
SMALL = dict(vocab_size=V, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def native(name):
    if name == "gpt":
        return GPTLM(GPTConfig(**SMALL, block_size=64)).eval()
    if name == "mosaic_v2":
        v2 = dict(key_extractor="gated", bandwidth="adaptive", short_term_window=4, persistent="swiglu")
        return MosaicLM(
            MosaicConfig(**SMALL, attn_dropout=0.0, long_term_skip_min=3, long_term_skip_max=5, **v2)
        ).eval()
    if name == "mosaic_head16":
        return MosaicLM(MosaicConfig(**{**SMALL, "n_embd": 32}, attn_dropout=0.0)).eval()
    return MosaicLM(MosaicConfig(**SMALL, attn_dropout=0.0)).eval()


KINDS = ["mosaic", "mosaic_v2", "mosaic_head16", "gpt"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (native model, HF folder written by save_pretrained)."""
    out = {}
    for name in KINDS:
        torch.manual_seed(1)
        lm = native(name)
        hf = {"gpt": GPTForCausalLM}.get(name, MosaicForCausalLM)(hf_config(lm.config))
        hf.model.load_state_dict(lm.state_dict())
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        out[name] = (lm, folder)
    return out


def left_pad(rows):
    T = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    return idx, mask


@pytest.mark.parametrize("name", KINDS)
def test_auto_model_logits_equal_the_native_model(saved, name):
    lm, folder = saved[name]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, (MosaicForCausalLM, GPTForCausalLM)) and not model.training
    assert type(AutoModel.from_pretrained(folder)) is type(model)
    assert AutoConfig.from_pretrained(folder).to_native() == lm.config
    idx = torch.randint(0, V, (3, 40))
    with torch.no_grad():
        diff = (model(idx).logits - lm(idx)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("name", KINDS)
def test_greedy_generate_equals_native_generate_with_and_without_cache(saved, name):
    lm, folder = saved[name]
    model = AutoModelForCausalLM.from_pretrained(folder)
    idx = torch.randint(0, V, (2, 7))
    expected = lm.generate(idx, 12, temperature=0)
    assert torch.equal(model.generate(idx, max_new_tokens=12, do_sample=False), expected)
    assert torch.equal(model.generate(idx, max_new_tokens=12, do_sample=False, use_cache=False), expected)


@pytest.mark.parametrize("name", ["mosaic", "mosaic_v2", "gpt"])
def test_left_padded_batch_generate_equals_one_by_one(saved, name):
    lm, folder = saved[name]
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = [torch.randint(1, V, (n,)) for n in (9, 2, 14, 9)]
    idx, mask = left_pad(rows)
    out = model.generate(idx, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], max_new_tokens=8, do_sample=False)[0, len(r) :]
        assert torch.equal(out[i, idx.shape[1] :], alone), i
        assert torch.equal(alone, lm.generate(r[None], 8, temperature=0)[0, len(r) :])
    # the package's own generate gives the same batch
    assert torch.equal(
        lm.generate(idx, 8, temperature=0, attention_mask=mask)[:, idx.shape[1] :], out[:, idx.shape[1] :]
    )


def test_sampling_options_draw_the_same_tokens_as_native_generate(saved):
    lm, folder = saved["mosaic"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    idx = torch.randint(0, V, (3, 6))
    kw = dict(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    torch.manual_seed(5)
    ours = lm.generate(idx, 10, **kw)
    torch.manual_seed(5)
    theirs = model.generate(idx, max_new_tokens=10, do_sample=True, **kw)
    assert torch.equal(ours, theirs)


def test_beam_search_with_the_memory_cache_equals_recomputation(saved):
    _, folder = saved["mosaic"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    idx = torch.randint(0, V, (2, 6))
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(idx, **kw), model.generate(idx, use_cache=False, **kw))


def test_generate_keeps_one_memory_cache_and_steps_it(saved):
    lm, folder = saved["mosaic"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    idx = torch.randint(0, V, (2, 5))
    out = model.generate(idx, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.cache, MosaicCache)
    assert out.cache.get_seq_length() == 5 + 3  # the last new token is never fed back
    state = out.cache.decoder.groups[0][1]
    assert state[0].cmem.keys.length == 5 + 3 - 1  # stored pairs: each input's pair once its value is complete


def test_padded_forward_logits_equal_each_row_alone_and_labels_give_the_native_loss(saved):
    lm, folder = saved["mosaic"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    a, b = torch.randint(0, V, (10,)), torch.randint(0, V, (4,))
    idx = torch.zeros(3, 10, dtype=torch.long)
    mask = torch.zeros(3, 10, dtype=torch.long)
    idx[0], mask[0] = a, 1
    idx[1, 6:], mask[1, 6:] = b, 1  # left padding
    idx[2, :4], mask[2, :4] = b, 1  # right padding
    with torch.no_grad():
        logits = model(idx, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(logits[0], lm(a[None])[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(logits[1, 6:], lm(b[None])[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(logits[2, :4], lm(b[None])[0], atol=1e-6, rtol=0)
        assert (logits[1, :6] == 0).all() and (logits[2, 4:] == 0).all()
        loss = model(a[None], labels=a[None]).loss
        torch.testing.assert_close(loss, lm(a[None, :-1], a[None, 1:])[1])


def test_token_spans_refuse_holes():
    assert token_spans(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])) == [(1, 3), (0, 4)]
    with pytest.raises(ValueError, match="contiguous"):
        token_spans(torch.tensor([[1, 0, 1]]))


def test_select_rows_reorders_a_native_state():
    lm = native("mosaic")
    idx = torch.randint(0, V, (3, 5))
    _, state = lm.prefill(idx)
    picked = select_rows(state, torch.tensor([2, 0]))
    _, alone = lm.prefill(idx[[2, 0]])
    nxt = torch.randint(0, V, (2, 1))
    torch.testing.assert_close(lm.step(nxt, picked), lm.step(nxt, alone), atol=1e-6, rtol=0)


def test_hf_config_carries_every_native_field_and_validates_through_it():
    cfg = MosaicConfig(**SMALL, key_extractor="gated")
    hf = hf_config(cfg, eos_token_id=3)
    assert hf.to_native() == cfg and hf.eos_token_id == 3 and hf.hidden_size == 16
    with pytest.raises(ValueError, match="key_extractor"):
        MosaicHFConfig(**{**SMALL, "key_extractor": "nope"}).to_native()


def test_conversion_both_ways_keeps_weights_and_tokenizer(tmp_path):
    from memory_mosaics.data.tokenizers import load_tokenizer, train_bpe

    lm = native("mosaic_v2")
    lm.save_pretrained(tmp_path / "ckpt")
    tok = train_bpe(["the cat sat on the mat", "a dog ran"] * 20, vocab_size=300)
    tok.save(tmp_path / "ckpt")
    model = to_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert is_hf_folder(tmp_path / "hf") and not is_hf_folder(tmp_path / "ckpt")
    assert model.config.eos_token_id == tok.eot_id
    assert load_tokenizer(tmp_path / "hf").encode("the cat") == tok.encode("the cat")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert auto.encode("the cat sat") == tok.encode("the cat sat") and auto.eos_token_id == tok.eot_id
    back = from_hf(tmp_path / "hf", tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    for key, value in lm.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert load_hf(tmp_path / "hf").config.to_native() == lm.config


def test_load_hf_names_a_folder_that_is_not_ours(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_hf(tmp_path)


def test_bundle_has_no_package_imports_and_stubs_the_kernel():
    files = bundle_sources()
    assert {"configuration_mosaics.py", "modeling_mosaics.py", "mm_models_mosaic.py"} <= set(files)
    for name, text in files.items():
        assert "memory_mosaics." not in "".join(
            line for line in text.splitlines() if line.lstrip().startswith(("from ", "import "))
        ), name
    assert "ctypes" not in files["mm_ops_small_head.py"]
    assert "mm_ops_leaky_triton_kernel.py" not in files  # the Triton kernel is stubbed: no Triton needed
    assert not any(
        re.match(r"\s*(import|from)\s+triton\b", line) for text in files.values() for line in text.splitlines()
    )


def test_trust_remote_code_folder_loads_without_the_package(saved, tmp_path):
    lm, folder = saved["mosaic_v2"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_mosaics.MosaicForCausalLM"
    idx = torch.randint(0, V, (2, 12))
    torch.save({"idx": idx, "logits": lm(idx).detach(), "gen": lm.generate(idx, 6, temperature=0)}, tmp_path / "ref.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["memory_mosaics"] = None  # not importable: everything must come from the folder
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            diff = (model(ref["idx"]).logits - ref["logits"]).abs().max().item()
        assert diff < 1e-5, diff
        assert torch.equal(model.generate(ref["idx"], max_new_tokens=6, do_sample=False), ref["gen"])
        print("ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
    assert "kernel unavailable" not in run.stderr  # no C files in the folder: torch paths, quietly


def test_import_memory_mosaics_then_transformers_registers_the_auto_classes():
    script = (
        "import memory_mosaics, sys\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "c = AutoConfig.for_model('mosaic', vocab_size=7, n_layer=1, n_head=1, n_embd=4)\n"
        "print(type(AutoModelForCausalLM.from_config(c)).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "MosaicForCausalLM", run.stderr[-3000:]


def test_hub_ids_offline_fail_in_one_line_and_local_folders_always_win(tmp_path, monkeypatch):
    from memory_mosaics.hf.hub import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        resolve("nobody-here/no-such-model")
    message = str(err.value)
    assert "\n" not in message and "could not be downloaded from the Hugging Face Hub" in message
    local = tmp_path / "owner" / "name"  # looks like a Hub id, exists locally: used as it is
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve("owner/name") == local.relative_to(tmp_path)
    with pytest.raises(ValueError, match="neither a local folder nor"):
        resolve("not a hub id")


def test_mosaics_convert_both_ways_from_the_command_line(tmp_path, capsys):
    from memory_mosaics import cli

    lm = native("mosaic")
    lm.save_pretrained(tmp_path / "ckpt")
    assert cli.main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "modeling_mosaics.py").is_file()
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert torch.equal(MosaicLM.from_pretrained(tmp_path / "back").wte.weight, lm.wte.weight)
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "again"), "--to", "hf"]) == 2
    assert "already a Hugging Face folder" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2  # OUT not empty
    assert "not an empty folder" in capsys.readouterr().err


def test_a_package_checkpoint_loads_directly_with_auto_model(tmp_path):
    """No conversion needed to read one: the package config's fields are the HF config's, and
    transformers adds the ``model.`` prefix of the native weights."""
    lm = native("mosaic_v2")
    lm.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    idx = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        assert (model(idx).logits - lm(idx)).abs().max().item() < 1e-5


def test_beam_search_on_left_padded_prompts_of_different_lengths_equals_one_by_one(saved):
    _, folder = saved["mosaic"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = [torch.randint(1, V, (n,)) for n in (3, 8)]
    idx, mask = left_pad(rows)
    kw = dict(max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    out = model.generate(idx, attention_mask=mask, **kw)
    for i, r in enumerate(rows):
        assert torch.equal(out[i, idx.shape[1] :], model.generate(r[None], **kw)[0, len(r) :]), i


def test_push_to_hub_uploads_an_hf_folder_of_a_package_checkpoint(tmp_path, monkeypatch):
    """No network: HfApi is replaced by a recorder of what would be uploaded."""
    import huggingface_hub

    from memory_mosaics.hf import hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path):
            uploaded[repo_id] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["config"] = json.loads((Path(folder_path) / "config.json").read_text())

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    native("mosaic").save_pretrained(tmp_path / "ckpt")
    assert hub.push_to_hub(tmp_path / "ckpt", "me/mosaic") == "https://huggingface.co/me/mosaic"
    assert {"config.json", "model.safetensors", "modeling_mosaics.py"} <= set(uploaded["me/mosaic"])
    assert uploaded["config"]["auto_map"]["AutoModelForCausalLM"] == "modeling_mosaics.MosaicForCausalLM"
