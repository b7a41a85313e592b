"""The code blocks of docs/testing.md run, in order, as one script."""

import pathlib
import re

import pytest


DOC = pathlib.Path(__file__).parent.parent / "docs" / "testing.md"


@pytest.mark.slow
def test_testing_doc_code_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
