"""The baselines' input adapter for named inputs: integer inputs embedded with the ids of the
training rows, float inputs of any rank flattened, ids outside training refused by name; heads
per task kind (K logits for a multiclass task), trained by fusekit's one loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusekit.data.dataset import Split
from fusekit.errors import FusekitError
from fusekit.models.baselines import build_baseline
from fusekit.models.baselines.inputs import InputLayout
from fusekit.task_kinds import TaskKind
from fusekit.train import evaluate, fit, predict
from fusekit.train_config import TrainConfig

KINDS = {"cls": TaskKind("multiclass", 3, "probability", (3,)), "y": TaskKind("regression", None, "value")}


def _split(n: int, seed: int, max_id: int = 4) -> Split:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, max_id + 1, size=(n, 2))
    image = rng.normal(size=(n, 1, 2, 3)).astype(np.float32)
    # Labels that the inputs decide, so that a trained model beats chance.
    cls = (codes[:, 0] % 3).astype(np.int64)
    y = (image.reshape(n, -1).sum(axis=1) + codes[:, 1]).astype(np.float32)
    return Split({"codes": codes, "image": image}, {"cls": cls, "y": y})


def test_layout_embeds_integer_columns_with_the_training_ids_and_flattens_float_inputs():
    layout = InputLayout.from_split(_split(200, 0))
    assert layout.names == ("codes", "image")
    assert layout.cardinalities == {"codes": (5, 5)} and layout.widths == {"image": 6}
    assert layout.all_cardinalities == [5, 5] and layout.n_dense == 6


def test_an_id_that_training_never_saw_is_refused_naming_the_input():
    layout = InputLayout.from_split(_split(200, 0, max_id=4))
    layout.check(_split(50, 1, max_id=4), "test")  # the same ids: accepted
    with pytest.raises(FusekitError) as err:
        layout.check(_split(50, 2, max_id=7), "test")
    text = str(err.value)
    assert "input codes holds id" in text and "outside the ids 0..4" in text and "\n" not in text
    bad = Split({"codes": np.array([[0, -1]]), "image": np.zeros((1, 1, 2, 3), np.float32)})
    with pytest.raises(FusekitError, match="negative id"):
        InputLayout.from_split(bad)


@pytest.mark.parametrize("name", ["aitm"])  # the one whose towers read another task's representation
def test_a_baseline_on_named_inputs_trains_a_multiclass_and_a_regression_head(name):
    train, val = _split(600, 0), _split(300, 1)
    layout = InputLayout.from_split(train)
    torch.manual_seed(0)
    model = build_baseline(name, [], 0, ["cls", "y"], kinds=KINDS, layout=layout)
    assert model.input_names == ["codes", "image"]
    out = predict(model, val, ["cls", "y"])
    assert out["cls"].shape == (300, 3) and out["y"].shape == (300,)
    np.testing.assert_allclose(out["cls"].sum(axis=1), 1.0, atol=1e-5)
    before = evaluate(model, val, ["cls", "y"])
    fit(model, train, val, ["cls", "y"], TrainConfig(max_epochs=15, patience=15, batch_size=64, lr=1e-2,
                                                      progress=False, device="cpu"))
    after = evaluate(model, val, ["cls", "y"])
    assert after["cls"] > max(before["cls"], 0.5)  # accuracy: chance is 1/3
    assert after["y"] > before["y"] and after["y"] > 0.5  # R2
