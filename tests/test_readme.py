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
