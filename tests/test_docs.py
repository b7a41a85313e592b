"""Every ```python block of the docs runs, page by page in one namespace, so docs never drift;
where the text around a block states a result, the test checks that result.

Blocks fenced as ```py are shown but not run: code that needs an optional package
(Flax NNX on "Your own model"), which its own test runs where the package is installed.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree


matplotlib.use("Agg")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _readme(ns):
    # "slope ~ 3: IGR is GD's order-1 flow": local error O(h^3), every point above the floor.
    estimate = ns["estimate"]
    assert estimate.expected == 3 and estimate.used.all()
    assert abs(estimate.slope - 3) < 0.3, str(estimate)


def _index(ns):
    problem, dl = ns["problem"], ns["dl"]
    # "21 stacked states" of a 64-8-10 MLP.
    assert ns["iterates"]["W1"].shape == (21, 64, 8)
    # IGR is the gradient flow of L + h/4 |grad L|^2 (h = 0.1), written out independently.
    flat, unravel = ravel_pytree(problem.params)
    loss = lambda p: problem.loss(unravel(p), problem.data)
    regularised = lambda p: loss(p) + 0.1 / 4 * jnp.sum(jax.grad(loss)(p) ** 2)
    assert ns["igr"].order == 1
    assert float(ns["igr"].modified_loss(problem.params, problem.data)) == pytest.approx(
        float(regularised(flat)), rel=1e-12
    )
    field = ravel_pytree(ns["field"])[0]
    np.testing.assert_allclose(field, -jax.grad(regularised)(flat), rtol=1e-10, atol=1e-14)
    # The drift starts at 0 and, IGR being GD's order-1 flow (gradient flow: order 0), stays
    # below gradient flow's after the 20 steps.
    distance = ns["distance"]
    assert distance.errors.shape == (21,) and distance.errors[0] == 0.0
    gd = ns["gd"]
    baseline = dl.drift(gd, dl.GradientFlow(problem.loss), problem.params, 0.1, 20, problem.data)
    assert 0 < distance.errors[-1] < baseline.errors[-1]
    # "slope ~ 3 = order + 2"
    assert abs(ns["estimate"].slope - 3) < 0.2


#: The results a page's text states about its blocks, checked after the blocks run.
CLAIMS = {"README.md": _readme, "docs/index.md": _index}


#: Pages whose blocks take over ~7 s (model fits, meshes, kit runs): the full suite runs them.
SLOW_PAGES = {
    "docs/testing.md",
    "docs/your-model.md",
    "docs/index.md",
    "docs/devices.md",
    "docs/optax.md",
}


def _page_param(page):
    name = str(page.relative_to(ROOT))
    return pytest.param(page, id=name, marks=[pytest.mark.slow] if name in SLOW_PAGES else [])


@pytest.mark.parametrize("page", [_page_param(page) for page in PAGES])
def test_code_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in BLOCK.findall(page.read_text()):
        exec(compile(block, str(page), "exec"), namespace)
    claims = CLAIMS.get(str(page.relative_to(ROOT)))
    if claims is not None:
        claims(namespace)
