"""The README's quick start runs as pasted, on the backend of the tests, and its logs show the
schedules at the data's own epoch clock."""

import pathlib
import re
import subprocess
import sys

from tests.programs import runner

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def quick_start():
    """The first Python block after the "## Quick start" heading."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs_as_pasted(tmp_path):
    code = quick_start()
    assert "keras_qsgld.QSGLDMonitor()" in code and "track_noise=True" in code
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=runner.script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 1797 examples, validation_split=0.2: 1437 training examples, batches of 64: 23 updates.
    assert re.search(
        r"^updates per epoch: 23$", result.stdout, re.M
    )  # as the comment says
    # epoch 20 = 460 updates: t = 20 epochs, Qp = 2**19 * 2**1 (e**2 - 2 <= t < e**4 - 2), the
    # gate sigmoid(-2 (20 - 4)) = 1.27e-14.
    assert "last epoch: Qp 1048576.0 gate 1.2664" in result.stdout
    header = (tmp_path / "qsgld_log.csv").read_text().splitlines()[0]
    assert "qsgld_qp" in header and "qsgld_noise_variance_ratio" in header
