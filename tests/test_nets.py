from __future__ import annotations

import pytest
import torch

from vidtag.heads import create_loss, list_losses
from vidtag.nets import create_model, list_models, register_model


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_on_a_tiny_clip(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    logits, emb = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5) and emb.shape[0] == 2 and emb.ndim == 2


def test_model_sees_frame_order() -> None:
    torch.manual_seed(0)
    model = create_model("x2plus1d_xs", num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x.flip(2))
    assert not torch.allclose(a, b, atol=1e-5)


def test_registry_rejects_duplicates_and_unknown() -> None:
    with pytest.raises(ValueError):
        register_model("x2plus1d_s")(lambda **kw: torch.nn.Identity())
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope", num_classes=2)


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_is_differentiable(name: str) -> None:
    logits = torch.randn(4, 6, requires_grad=True)
    y = (torch.rand(4, 6) > 0.5).float()
    loss = create_loss(name)(logits, y)
    loss.backward()
    assert loss.ndim == 0 and logits.grad is not None
