"""The code blocks of the docs that tests run as a user would paste them: a ```python block
right after a `<!-- tested: NAME -->` line."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def code_block(page, name):
    """The code of the block `name` of `docs/<page>`; exactly one must carry that name."""
    text = (ROOT / "docs" / page).read_text()
    blocks = re.findall(
        rf"<!-- tested: {re.escape(name)} -->\n```python\n(.*?)```",
        text,
        flags=re.S,
    )
    assert len(blocks) == 1, (
        f"docs/{page} must hold one ```python block marked <!-- tested: {name} -->"
    )
    return blocks[0]
