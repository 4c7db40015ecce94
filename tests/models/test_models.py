"""Every model in MODELS: forward shapes, init scale, bias switch, separate activation modules, and
independent reference forwards (functional re-implementations of the papers' code)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokscope.models import MODELS, ModelError, build_model, resolve_factory
from grokscope.models.adapters import continuous_view

P = 7
# name -> (kwargs, input maker, expected output shape)
CASES = {
    "mlp": ({"in_dim": 64, "out_dim": 10, "depth": 2, "width": 16}, lambda: torch.rand(4, 1, 8, 8), (4, 10)),
    "modular_mlp": ({"p": P, "width": 16}, lambda: _tokens(5), (5, P)),
    "transformer": ({"p": P, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}, lambda: _tokens(5), (5, P)),
    "cnn": ({"in_channels": 1, "n_classes": 10, "image_size": 8}, lambda: torch.rand(3, 1, 8, 8), (3, 10)),
    "grokalign_cnn": ({"width": 4}, lambda: torch.rand(2, 3, 32, 32), (2, 10)),
    "preact_resnet18": ({"width": 4}, lambda: torch.rand(2, 3, 32, 32), (2, 10)),
    "attn_only": ({"vocab_size": P + 1, "n_ctx": 3, "d_model": 16, "n_heads": 2, "d_head": 8}, lambda: _tokens(5),
                  (5, 3, P + 1)),
}


def _tokens(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ab = torch.randint(0, P, (n, 2), generator=g)
    return torch.cat([ab, torch.full((n, 1), P)], dim=1)


def _params(name: str) -> set[str]:
    return set(inspect.signature(resolve_factory(MODELS[name])).parameters)


def test_every_registered_model_has_a_case() -> None:
    assert set(MODELS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shapes(name: str) -> None:
    kwargs, make_x, shape = CASES[name]
    model = build_model({"arch": name, "kwargs": kwargs})
    out = model(make_x())
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(n for n in CASES if "init_scale" in _params(n)))
def test_init_scale_multiplies_every_parameter(name: str) -> None:
    kwargs, make_x, _ = CASES[name]
    torch.manual_seed(0)
    base = build_model({"arch": name, "kwargs": kwargs}).state_dict()
    torch.manual_seed(0)
    scaled = build_model({"arch": name, "kwargs": {**kwargs, "init_scale": 8.0}}).state_dict()
    assert base.keys() == scaled.keys() and len(base) > 0
    for k in base:
        torch.testing.assert_close(scaled[k], 8.0 * base[k])


@pytest.mark.parametrize("name", sorted(n for n in CASES if "bias" in _params(n)))
def test_bias_switch(name: str) -> None:
    kwargs, make_x, shape = CASES[name]
    layers = (nn.Linear, nn.Conv2d)
    off = build_model({"arch": name, "kwargs": {**kwargs, "bias": False}})
    assert all(m.bias is None for m in off.modules() if isinstance(m, layers))
    assert not any("bias" in n for n, _ in off.named_parameters())
    assert off(make_x()).shape == shape
    on = build_model({"arch": name, "kwargs": {**kwargs, "bias": True}})
    assert any("bias" in n for n, _ in on.named_parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_activation_module_is_used_once(name: str) -> None:
    """Probes hook activation modules: no instance may be shared or bypassed by a functional call."""
    kwargs, make_x, _ = CASES[name]
    model = build_model({"arch": name, "kwargs": kwargs})
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.LeakyReLU))]
    calls = {id(m): 0 for m in acts}
    for m in acts:
        m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1))
    model(make_x())
    assert all(c == 1 for c in calls.values())
    expected = {"mlp": 2, "modular_mlp": 1, "transformer": 1, "cnn": 2, "grokalign_cnn": 7, "preact_resnet18": 16,
                "attn_only": 0}  # attention only: no activation module
    assert len(acts) == expected[name]


def test_mlp_structure_and_activations() -> None:
    m = build_model({"arch": "mlp", "kwargs": {"in_dim": 5, "out_dim": 3, "depth": 4, "width": 7,
                                               "activation_name": "leaky_relu"}})
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(5, 7)] + [(7, 7)] * 3 + [(7, 3)]
    assert sum(isinstance(x, nn.LeakyReLU) for x in m.modules()) == 4
    with pytest.raises(ValueError, match="unknown activation 'swish'; valid: relu"):
        build_model({"arch": "mlp", "kwargs": {"in_dim": 5, "out_dim": 3, "activation_name": "swish"}})


def test_cnn_matches_functional_reference() -> None:
    torch.manual_seed(0)
    m = build_model({"arch": "cnn", "kwargs": {"in_channels": 2, "n_classes": 5, "image_size": 9,
                                               "channels": (3, 4, 6)}})
    x = torch.rand(3, 2, 9, 9)
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    h = x
    for c in convs:
        h = F.relu(F.conv2d(h, c.weight, c.bias, stride=2, padding=1))
    assert h.shape[-2:] == (2, 2)  # 9 -> 5 -> 3 -> 2
    lin = m[-1]
    torch.testing.assert_close(m(x), F.linear(h.flatten(1), lin.weight, lin.bias))


def test_grokalign_cnn_matches_original_architecture() -> None:
    torch.manual_seed(0)
    m = build_model({"arch": "grokalign_cnn"})
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert [(l.in_features, l.out_features) for l in linears] == [(128, 128), (128, 10)]
    assert all(l.bias is None for l in linears)
    # Kaiming-normal, fan-out, ReLU gain: std = sqrt(2 / (out_channels * 9)); 73 728 draws
    w = convs[4].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)
    assert abs(w.mean().item()) < 0.002
    # the original forward: two AvgPool2d(2, 2) on the 4x4 map, then the linear head
    ref = nn.Sequential(*[l for l in m if not isinstance(l, nn.AdaptiveAvgPool2d)][:12],
                        nn.AvgPool2d(2, 2), nn.AvgPool2d(2, 2), nn.Flatten(), linears[0], nn.ReLU(), linears[1])
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ref(x))


def _preact_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Humayun et al.'s forward (kuangliu preact_resnet) with F.relu and avg_pool2d(4), on our weights."""
    out = model.conv1(x)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for b in stage:
            o = F.relu(b.bn1(out))
            sc = b.shortcut(o) if b.shortcut is not None else out
            o = b.conv1(o)
            o = b.conv2(F.relu(b.bn2(o)))
            out = o + sc
    out = F.avg_pool2d(out, 4)
    return model.linear(out.view(out.size(0), -1))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_preact_resnet18_matches_reference(batchnorm: bool) -> None:
    torch.manual_seed(0)
    m = build_model({"arch": "preact_resnet18", "kwargs": {"width": 4, "batchnorm": batchnorm}}).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m(x), _preact_reference(m, x))
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 2 per block, 3 projection shortcuts
    assert all(c.bias is None for c in convs)
    assert m.conv1.out_channels == 4 and m.linear.in_features == 32
    n_bn = sum(isinstance(c, nn.BatchNorm2d) for c in m.modules())
    assert n_bn == (16 if batchnorm else 0)
    if not batchnorm:
        assert isinstance(m.layer2[0].bn1, nn.Identity) and isinstance(m.layer4[1].bn2, nn.Identity)
    # other image sizes and channel counts work (global pooling)
    m2 = build_model({"arch": "preact_resnet18", "kwargs": {"width": 2, "in_channels": 1, "n_classes": 4}})
    assert m2(torch.rand(1, 1, 16, 16)).shape == (1, 4)


@pytest.mark.parametrize("name", ["modular_mlp", "transformer"])
def test_token_adapters_agree_with_forward(name: str) -> None:
    kwargs, make_x, _ = CASES[name]
    torch.manual_seed(1)
    model = build_model({"arch": name, "kwargs": kwargs})
    x = make_x()
    h = model.embed(x)
    assert h.dtype == torch.float32 and h.shape[0] == x.shape[0]
    torch.testing.assert_close(model.forward_embedded(h), model(x))
    f, z = continuous_view(model, x, "tokens")
    assert not z.requires_grad
    z = z.clone().requires_grad_(True)
    out = f(z)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_modular_mlp_reference_forward() -> None:
    torch.manual_seed(2)
    m = build_model({"arch": "modular_mlp", "kwargs": {"p": P, "width": 8, "depth": 2, "bias": True}})
    x = _tokens(6)
    E = m.embed_tokens.weight
    h = F.relu(E[x[:, 0]] + E[x[:, 1]])
    h = F.relu(m.hidden[0](h))
    torch.testing.assert_close(m(x), m.unembed(h))
    assert m.embed(x).shape == (6, 2, 8)
    # one-hot input: the first layer is a bias-free linear map on e_a + e_b
    oh = build_model({"arch": "modular_mlp", "kwargs": {"p": P, "width": 8, "input": "onehot_sum"}})
    assert oh.embed_linear.bias is None
    xs = torch.eye(P)[x[:, 0]] + torch.eye(P)[x[:, 1]]
    torch.testing.assert_close(oh(xs), oh.unembed(F.relu(xs @ oh.embed_linear.weight.T)))
    f, z = continuous_view(oh, xs, "continuous")
    assert f is oh and z is xs


def test_transformer_reference_forward() -> None:
    """An einsum re-implementation of Nanda et al.'s one-layer transformer, in float64."""
    torch.manual_seed(3)
    kwargs = CASES["transformer"][0]
    m = build_model({"arch": "transformer", "kwargs": kwargs}).double()
    tok = _tokens(4)
    nh, dh = kwargs["n_heads"], kwargs["d_head"]
    x = m.embed_tokens.weight[tok] + m.pos[None]
    W = {k: getattr(m.attn, k).weight for k in "qkvo"}
    q, k, v = (torch.einsum("ntd,ed->nte", x, W[c]).reshape(4, 3, nh, dh) for c in "qkv")
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dh)
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    attn = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    z = torch.einsum("nhqk,nkhd->nqhd", attn, v).reshape(4, 3, nh * dh)
    x = x + z @ W["o"].T
    x = x + m.mlp_out(F.relu(m.mlp_in(x)))
    torch.testing.assert_close(m(tok), x[:, -1] @ m.unembed.weight.T)
    assert m.embed(tok).shape == (4, 3, kwargs["d_model"])


def test_unknown_model_and_bad_kwargs() -> None:
    with pytest.raises(ModelError) as e:
        build_model({"arch": "vgg"})
    for name in MODELS:
        assert name in str(e.value)
    with pytest.raises(ModelError, match="bad arguments for model 'cnn'"):
        build_model({"arch": "cnn", "kwargs": {"depth": 3}})
    m = build_model({"factory": "grokscope.models.cnn:cnn", "kwargs": {"channels": [4]}})
    assert m(torch.rand(1, 1, 8, 8)).shape == (1, 10)


def test_attn_only_is_causal_and_names_its_heads() -> None:
    """Logits at position t read only tokens 0..t; a head's slices are its rows of q, k, v and columns of o."""
    torch.manual_seed(0)
    m = build_model({"arch": "attn_only", "kwargs": {"vocab_size": 11, "n_ctx": 6, "d_model": 16, "n_heads": 4,
                                                     "d_head": 4, "n_layers": 2}}).eval()
    ids = torch.randint(0, 11, (3, 6))
    later = ids.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 11
    with torch.no_grad():
        a, b = m(ids), m(later)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    sl = m.head_slices(1, 2)
    assert sl == {f"blocks.1.attn.{n}.weight": (0 if n != "o" else 1, slice(8, 12)) for n in "qkvo"}
    outs = []
    with torch.no_grad():  # head 2 with zero value rows writes nothing, whatever its output columns hold
        m.blocks[1].attn.v.weight[8:12] = 0
        for fill in (1.0, -3.0):
            m.blocks[1].attn.o.weight[:, 8:12] = fill
            outs.append(m(ids))
        m.blocks[1].attn.o.weight[:, 4:8] = 5.0  # head 1's columns do matter
        outs.append(m(ids))
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0], a) and not torch.allclose(outs[2], outs[0])


def test_transformer_init_as_the_authors_code() -> None:
    """``init="nanda"``: every weight matrix N(0, 1/d_model), the unembedding N(0, 1/(p + 1)), biases
    zero (the authors' ``transformers.py``); the sum of squared weights is then their expectation within
    a few per cent (torch's default init gives about a third of it); an unknown init is refused."""
    p, d, d_mlp = 113, 128, 512
    torch.manual_seed(0)
    m = build_model({"arch": "transformer", "kwargs": {"p": p, "init": "nanda"}})
    for name in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp_in", "mlp_out"):
        w = m.get_submodule(name).weight.detach()
        assert float(w.std()) == pytest.approx(1 / math.sqrt(d), rel=0.05), name
    assert float(m.unembed.weight.detach().std()) == pytest.approx(1 / math.sqrt(p + 1), rel=0.05)
    assert not m.mlp_in.bias.any() and not m.mlp_out.bias.any()
    want = (p + 1) + 3 + 4 * d + 2 * d_mlp + p * d / (p + 1)  # E[Σθ²] of each matrix: entries x variance
    with torch.no_grad():
        total = sum(float((q ** 2).sum()) for q in m.parameters())
        torch.manual_seed(0)
        plain = build_model({"arch": "transformer", "kwargs": {"p": p}})
        default = sum(float((q ** 2).sum()) for q in plain.parameters())
    assert total == pytest.approx(want, rel=0.03) and default < 0.4 * want
    with pytest.raises(ModelError, match="init must be one of torch, nanda, got 'xavier'"):
        build_model({"arch": "transformer", "kwargs": {"p": p, "init": "xavier"}})
