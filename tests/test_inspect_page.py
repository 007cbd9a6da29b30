"""The explorer page and ``mosaics inspect`` (no browser: see test_inspect_browser.py)."""

import json
import re

import pytest
import torch
from inspect_helpers import STORY, page_data, tiny_checkpoint, tiny_moons_run

from memory_mosaics import cli
from memory_mosaics.inspect.page import render_page


def test_page_is_self_contained_and_embeds_its_data_verbatim():
    nasty = ["</script><script>alert(1)</script>", "<!-- a", "naïve \u2028 ok", "{{DATA}}"]
    data = {"kind": "language", "title": "t", "tokens": nasty, "layers": []}
    html = render_page(data)
    assert page_data(html) == data
    assert html.count("</script>") == 2  # the data's and the code's: no token closed a script
    assert not re.search(r"""<link|<script[^>]*\ssrc=|@import|url\(|(src|href)=["']?https?:""", html)
    with pytest.raises(ValueError, match="kind"):
        render_page({"kind": "video"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_inspect_command_writes_page_and_json(checkpoint, tmp_path, capsys):
    page, data_file = tmp_path / "out" / "page.html", tmp_path / "data.json"
    argv = ["inspect", "--checkpoint", str(checkpoint), "--text", STORY, "--out", str(page), "--json", str(data_file)]
    assert cli.main([*argv, "--top-k", "4", "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().err
    data = json.loads(data_file.read_text(encoding="utf-8"))
    assert page_data(page.read_text(encoding="utf-8")) == data
    T = len(data["tokens"])
    assert "".join(data["tokens"]) == "<|endoftext|>" + STORY and len(data["loss"]) == T - 1
    assert len(data["layers"]) == 2
    for layer in data["layers"]:
        assert [m["kind"] for m in layer["memories"]] == ["contextual", "persistent"]
        assert set(layer["norms"]) == {"cmem", "pmem", "stream"}
        for mem in layer["memories"]:
            assert mem["k"] == 4 and len(mem["src"]) == len(mem["heads"]) == 2
            assert all(len(row) == T * 4 for row in mem["src"] + mem["w"])
        cmem = layer["memories"][0]
        assert all(s < t for t in range(T) for s in cmem["src"][0][4 * t : 4 * t + 4])  # strictly causal
        assert {str(i) for row in layer["lens"]["ids"] for i in row} <= set(data["vocab"])
        assert {"beta", "decay", "gamma", "effective_pairs", "distance", "copy"} <= set(cmem["heads"][0])


def test_inspect_from_a_file_and_json_only(checkpoint, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("Tom and Tom.", encoding="utf-8")
    out = tmp_path / "d.json"
    assert cli.main(["inspect", "--checkpoint", str(checkpoint), "--file", str(story), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tokens"][0] == "<|endoftext|>"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--text", "hi"], "--out"),
        (["--out", "p.html"], "--text"),
        (["--text", "", "--out", "p.html"], "empty"),
        (["--text", "hi", "--out", "p.html", "--top-k", "0"], "--top-k"),
        (["--text", "hi", "--out", "p.html", "--threads", "0"], "--threads"),
        (["--text", "hi", "--out", "p.html", "--layer", "2"], "--layer must be in 0..1"),
        (["--text", "hi", "--out", "p.html", "--head", "-1"], "--head must be in 0..1"),
        (["--text", "hi", "--out", "p.html", "--token", "99"], "--token"),
    ],
)
def test_bad_options_are_one_line_errors(checkpoint, tmp_path, capsys, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", "--checkpoint", str(checkpoint), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mosaics: error:") and "\n" not in err and words in err


def test_moons_page(tmp_path, capsys):
    run = tiny_moons_run(tmp_path / "moons")
    out = tmp_path / "moons.html"
    assert cli.main(["inspect", "--moons", str(run), "--out", str(out), "--top-k", "8"]) == 0
    data = page_data(out.read_text(encoding="utf-8"))
    assert data["kind"] == "moons" and [m["name"] for m in data["models"]] == ["1head", "3heads"]
    T = len(data["x"])
    assert T == int(data["combined_steps"]) + 100 and len(data["x"][0]) == 6
    for model in data["models"]:
        heads = len(model["memory"]["heads"])
        assert len(model["shares"]["key"]) == heads and len(model["memory"]["src"][0]) == T * 8
        assert all(abs(sum(row) - 1) < 1e-2 for row in model["shares"]["key"] + model["shares"]["value"])
        assert 1 / 3 - 1e-6 <= model["disentanglement"] <= 1
    assert cli.main(["inspect", "--moons", str(run), "--out", str(out), "--seed", "3"]) == 2
    assert "seeds: 7" in capsys.readouterr().err
    assert cli.main(["inspect", "--moons", str(tmp_path), "--out", str(out)]) == 2  # no metrics.json


def test_long_text_stays_sparse(checkpoint):
    """The page's size grows as T x k, never T x T."""
    from memory_mosaics.inspect import inspect
    from memory_mosaics.inspect.export import language_dict
    from memory_mosaics.models import load_pretrained

    model = load_pretrained(checkpoint)
    sizes = []
    for T in (200, 400):
        ins = inspect(model, torch.randint(0, 300, (T,)), top_k=4, chunk=64)
        data = language_dict(ins, ["x"] * T, {i: "x" for i in range(300)})
        sizes.append(len(json.dumps(data)))
    assert 1.8 < sizes[1] / sizes[0] < 2.2
