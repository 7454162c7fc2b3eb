"""The README's Python examples run as written (shortened to a few steps)."""

import re
from pathlib import Path

from flexmtl.sharing import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace("steps=500", "steps=5")
    assert "steps=5" in code
    monkeypatch.chdir(tmp_path)  # out_dir="runs/mine" lands here
    namespace: dict = {}
    before = set(METHODS.names())
    try:
        exec(compile(code, str(README), "exec"), namespace)
    finally:  # the README registers a method of its own: leave the registry as it was
        for name in set(METHODS.names()) - before:
            METHODS.unregister(name)
    gated = namespace["gated"]
    assert gated.kind == "gated-stack" and gated.sharing_parameters() == [gated.gate_logits]
    assert (tmp_path / "runs" / "mine" / "best.pt").exists()
    emb = namespace["core"].embeddings()
    assert emb.shape == (2, 8) and set(emb.unique().tolist()) <= {0.0, 1.0}


def test_readme_quickstart_prints_the_same_numbers_on_every_run(tmp_path, monkeypatch, capsys):
    """The quickstart's printed results do not depend on what the process drew before it:
    ``fm.seed_everything`` fixes the weights and ``TrainConfig.seed`` every draw of training
    (batches, dropout masks). Run twice in one process, with other draws between building
    the model and training."""
    import torch

    first = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    code = first.replace("steps=500", "steps=20")
    assert "steps=20" in code and "dropout=0.5" in code  # dropout: training draws masks
    # other draws between building the model and training: only TrainConfig.seed undoes them
    code = code.replace("result = fm.Trainer(", "torch.rand(NOISE); result = fm.Trainer(")
    assert "torch.rand(NOISE)" in code
    printed = []
    for k, noise in enumerate((1, 1000)):
        (tmp_path / str(k)).mkdir()
        monkeypatch.chdir(tmp_path / str(k))  # a fresh runs/mine: trained, not resumed
        exec(compile(code, str(README), "exec"), {"torch": torch, "NOISE": noise})
        printed.append(capsys.readouterr().out)
    assert printed[0] and printed[0] == printed[1]
