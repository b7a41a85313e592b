"""The curated mutation check stays plantable: every mutant's line is still in the code once.

The check itself is not run in CI (it takes about as long as its targeted tests times the
number of mutants); this keeps a refactor from silently turning a mutant into a no-op.
"""

import pathlib

import pytest

from benchmarks import mutation_check


ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", mutation_check.MUTANTS, ids=lambda mutant: mutant.name)
def test_mutant_line_occurs_once_and_targets_existing_tests(mutant):
    assert mutant.old != mutant.new
    assert (ROOT / mutant.path).read_text().count(mutant.old) == 1, mutant.path
    for node in mutant.tests:
        test_file, _, name = node.partition("::")
        source = (ROOT / test_file).read_text()
        assert not name or f"def {name.split('[')[0]}(" in source, node
