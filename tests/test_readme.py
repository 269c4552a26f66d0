"""The README's first Python snippet (tiny random config) runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_readme_usage_snippet_runs(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    snippet = snippet.replace("/tmp/dclip-student", str(tmp_path / "student"))
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([2, 64])" in result.stdout
    assert (tmp_path / "student" / "model.safetensors").is_file()
