"""``rllc``: the restricted (refined) LLC — components of known learning coefficient (a quadratic in the
component's parameters gives d/2, parameters the loss ignores give 0, all parameters give the ``llc``
probe's estimate), the head slices of each supported attention layout against what the heads compute,
every component's chains batched against one component at a time, the causal-LM loss, and the errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.functional.components import resolve_components
from grokscope.losses import next_token_loss
from grokscope.models.transformer import Attention
from grokscope.probes import ProbeContext, ProbeError, get_probe
from grokscope.probes.llc import FlatModel, LLCProbe, RestrictedLLCProbe, full_loss, llc_loss, lm_labels
from grokscope.testing import check_probe
from tests.helpers import HFCausalLogits
from tests.probes.test_llc import discrete_sgld_llc, one_thread  # noqa: F401 - one torch thread here too

F64 = torch.float64


@dataclass
class Points:
    """A task as the probes read it: ``split(name) -> (x, y)``; for a causal-LM task ``y`` repeats the
    token ids, ``mask_train`` marks the real tokens and ``is_lm`` is True (the dataset contract)."""

    x: torch.Tensor
    y: torch.Tensor
    mask_train: torch.Tensor | None = None
    is_lm: bool = False

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def run(cls, model, data, **params):
    """The probe's public path: parameters made as the CLI makes them, then ``Probe.__call__``."""
    p = cls.make_params({k: str(v) for k, v in params.items()})
    cls().check(model, data, p)
    return cls()(model, data, p, ProbeContext(step=0))


# ------------------------------------------------------------------ components whose answer is known
class Quadratic(nn.Module):
    """Logits ``a(x) + b(x)``, two linear maps without bias, and a parameter the output never reads.
    With ``a`` at the least-squares fit of the one-hot targets given ``b``, the MSE restricted to ``a``
    is ``L* + ½ δᵀHδ`` exactly (a regular quadratic: λ = d_a / 2)."""

    def __init__(self, D: int, C: int):
        super().__init__()
        self.a = nn.Linear(D, C, bias=False)
        self.b = nn.Linear(D, C, bias=False)
        self.unused = nn.Parameter(torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


N, D, C_OUT = 400, 4, 3
SAMPLER = dict(lr=5e-3, gamma=1.0, n_chains=16, n_draws=300, n_burnin=60, loss="mse", seed=3)


@pytest.fixture(scope="module")
def quadratic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=F64)
    y = torch.randint(0, C_OUT, (N,), generator=g)
    model = Quadratic(D, C_OUT).double().eval()
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(y, C_OUT).to(F64)
        model.a.weight.copy_(torch.linalg.lstsq(x, onehot - model.b(x)).solution.T)
    data = Points(x, y)
    restricted = run(RestrictedLLCProbe, model, data, components="params:a,params:unused,all", **SAMPLER)
    whole = run(LLCProbe, model, data, **SAMPLER)
    return model, x, y, restricted, whole


def test_quadratic_in_the_component_gives_d_over_2(quadratic):
    model, x, y, out, _ = quadratic
    r = out.sel(component="params:a")
    d = D * C_OUT
    assert int(r.n_params) == d
    # The Hessian of the restricted loss, by autograd in float64 (independent of the sampler).
    w_a = model.a.weight.detach().clone()

    def loss_of_a(flat_a: torch.Tensor) -> torch.Tensor:
        logits = x @ flat_a.view(C_OUT, D).T + model.b(x)
        return llc_loss("mse")(logits, y)

    H = torch.autograd.functional.hessian(loss_of_a, w_a.reshape(-1))
    nbeta = out.attrs["nbeta"]
    assert nbeta == pytest.approx(N / math.log(N))
    exact = discrete_sgld_llc(H, nbeta, SAMPLER["gamma"], SAMPLER["lr"])
    se = float(r.llc_std) / math.sqrt(SAMPLER["n_chains"])
    # The tolerance is the chains' own spread: 4 standard errors of the mean over 16 chains, checked to
    # be small (so the test can fail), around this sampler's exact expectation (step size and γ included).
    assert se < 0.03 * d / 2, se
    assert abs(float(r.llc) - exact) < 4 * se, (float(r.llc), exact, se)
    # d/2 itself: the step size (+ε·a/4) and γ (−γ/a) move the expectation by |exact − d/2|, 3.4 % here.
    assert abs(exact - d / 2) < 0.05 * d / 2, exact
    assert abs(float(r.llc) - d / 2) < 4 * se + abs(exact - d / 2)
    assert str(r.warning.item()) == "" and float(r.rhat) < 1.1


def test_parameters_the_loss_ignores_give_zero(quadratic):
    _, _, _, out, _ = quadratic
    r = out.sel(component="params:unused")
    assert int(r.n_params) == 5
    assert np.all(r.dist.values > 0)              # the chains did move those coordinates ...
    assert np.all(r.loss_trace.values == float(out.loss_init))  # ... and the loss never changed
    assert float(r.llc) == 0.0 and np.all(r.llc_chain.values == 0.0)


def test_all_parameters_give_the_unrestricted_estimate(quadratic):
    _, _, _, out, whole = quadratic
    r = out.sel(component="all")
    assert int(r.n_params) == 2 * D * C_OUT + 5
    np.testing.assert_array_equal(r.loss_trace.values, whole.loss_trace.values)  # same seed: the same draws
    assert float(r.llc) == float(whole.llc) and float(r.rhat) == float(whole.rhat)
    np.testing.assert_array_equal(r.dist.values, whole.dist.values)



def test_the_whole_quadratic_model_counts_only_its_curved_directions(quadratic):
    """a + b only enters as a sum and ``unused`` not at all, so the whole model's Hessian has rank d_a of
    its 2 d_a + 5 parameters: λ = d_a/2, not d/2. The estimate for ``all`` matches this sampler's exact
    expectation on that Hessian (flat directions contribute nothing; the curved ones have twice a's
    curvature, hence a larger step-size shift) within 4 standard errors of the 16 chains."""
    model, x, y, out, _ = quadratic
    r = out.sel(component="all")
    sizes = [D * C_OUT, D * C_OUT, 5]

    def loss_of_all(flat: torch.Tensor) -> torch.Tensor:
        a, b, _ = torch.split(flat, sizes)
        return llc_loss("mse")(x @ a.view(C_OUT, D).T + x @ b.view(C_OUT, D).T, y)

    w = torch.cat([model.a.weight.detach().reshape(-1), model.b.weight.detach().reshape(-1),
                   model.unused.detach()])
    H = torch.autograd.functional.hessian(loss_of_all, w)
    assert int(torch.linalg.matrix_rank(H)) == D * C_OUT
    exact = discrete_sgld_llc(H, out.attrs["nbeta"], SAMPLER["gamma"], SAMPLER["lr"])
    se = float(r.llc_std) / math.sqrt(SAMPLER["n_chains"])
    assert se < 0.03 * D * C_OUT / 2, se
    assert abs(float(r.llc) - exact) < 4 * se, (float(r.llc), exact, se)


# ------------------------------------------------------------------ the heads of each layout
class AttnOnly(nn.Module):
    """A small causal attention-only transformer built here: token and position embeddings, ``layers``
    blocks of grokscope's :class:`Attention` (residual), an unembedding; logits ``(n, T, V)``."""

    def __init__(self, vocab: int = 12, d_model: int = 16, n_heads: int = 2, layers: int = 2, n_ctx: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))
        self.blocks = nn.ModuleList(Attention(d_model, n_heads, d_model // n_heads, n_ctx) for _ in range(layers))
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            h = h + block(h)
        return self.unembed(h)


def hf_model(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=16, n_head=4, n_layer=2, vocab_size=12, n_positions=8,
                                      bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        return HFCausalLogits(transformers.GPT2LMHeadModel(cfg)).eval()
    cfg = transformers.GPTNeoXConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
                                     intermediate_size=32, vocab_size=12, max_position_embeddings=8,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return HFCausalLogits(transformers.GPTNeoXForCausalLM(cfg)).eval()


# per layout: the model, the attention modules' output projection (its input is the heads' outputs
# side by side, head h in columns h*head_dim...), heads per layer, head_dim
LAYOUTS = {
    "grokscope": (lambda: AttnOnly(n_heads=2).eval(), lambda m, i: m.blocks[i].o, 2, 8),
    "gpt2": (lambda: hf_model("gpt2"), lambda m, i: m.lm.transformer.h[i].attn.c_proj, 4, 4),
    "gpt_neox": (lambda: hf_model("gpt_neox"), lambda m, i: m.lm.gpt_neox.layers[i].attention.dense, 4, 4),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_head_component_is_exactly_what_that_head_computes(layout):
    """Moving head h's query/key/value slices changes only head h's output (the output projection's
    input columns of h) and does change them; moving its output-projection slice changes the projection's
    output by exactly z_h ΔW_h. The heads partition the attention weights (disjoint masks)."""
    make, out_proj, n_heads, dh = LAYOUTS[layout]
    model = make()
    ids = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(1))
    comps = {c.name: c for c in resolve_components(model, ["heads"])}
    assert sorted(comps) == [f"head:{i}.{h}" for i in range(2) for h in range(n_heads)]
    params = dict(model.named_parameters())
    seen: dict[str, torch.Tensor] = {}
    for c in comps.values():
        for n, m in c.masks.items():
            assert not (seen.get(n, torch.zeros_like(m)) & m).any(), f"{c.name} overlaps another head in {n}"
            seen[n] = seen.get(n, torch.zeros_like(m)) | m
    proj_names = {n for n, mod in model.named_modules() if mod is out_proj(model, 0) or mod is out_proj(model, 1)}

    def captured() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ins, outs = [], []
        def keep(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            ins.append(args[0].detach())
            outs.append(out.detach())

        hooks = [out_proj(model, i).register_forward_hook(keep) for i in range(2)]
        with torch.no_grad():
            model(ids)
        for hk in hooks:
            hk.remove()
        return ins, outs

    layer, head = 0, 1
    c = comps[f"head:{layer}.{head}"]
    base_in, base_out = captured()
    cols = slice(head * dh, (head + 1) * dh)
    g = torch.Generator().manual_seed(2)
    qkv = {n: m for n, m in c.masks.items() if n.rpartition(".")[0] not in proj_names}
    proj = {n: m for n, m in c.masks.items() if n.rpartition(".")[0] in proj_names}
    assert qkv and len(proj) == 1
    with torch.no_grad():
        saved = {n: params[n].detach().clone() for n in c.masks}
        for n, m in qkv.items():
            params[n][m] += 0.5 * torch.randn(int(m.sum()), generator=g)
    new_in, _ = captured()
    changed = (new_in[layer] - base_in[layer]).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[cols].all() and not changed[:cols.start].any() and not changed[cols.stop:].any()
    with torch.no_grad():
        for n in c.masks:
            params[n].copy_(saved[n])
        (pname, pm), = proj.items()
        delta = torch.zeros_like(params[pname])
        delta[pm] = torch.randn(int(pm.sum()), generator=g)
        params[pname] += delta
    new_in, new_out = captured()
    torch.testing.assert_close(new_in[layer], base_in[layer])
    z_h = base_in[layer][..., cols]
    dW = delta[:, cols].T if layout != "gpt2" else delta[cols, :]  # Linear stores (out, in); Conv1D (in, out)
    torch.testing.assert_close(new_out[layer] - base_out[layer], z_h @ dW, rtol=1e-4, atol=1e-5)


def test_layers_and_prefixes_name_parameters():
    model = hf_model("gpt2")
    comps = {c.name: c for c in resolve_components(model, ["layers", "params:lm.transformer.wte", "all"])}
    assert list(comps) == ["layer:0", "layer:1", "params:lm.transformer.wte", "all"]
    assert set(comps["layer:1"].masks) == {n for n, _ in model.named_parameters()
                                          if n.startswith("lm.transformer.h.1.")}
    assert comps["all"].size == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec, model, message", [
    ("head:x", "attn", r"component 'head:x' is not understood; valid forms: all, heads, layers"),
    ("head:2.0", "attn", r"head:2.0: the model has 2 attention module\(s\); valid layers 0..1"),
    ("head:0.2", "attn", r"head:0.2: attention blocks.0 has 2 heads; valid heads 0..1"),
    ("layer:5", "attn", r"layer:5: blocks has 2 blocks; valid: layer:0..layer:1"),
    ("params:nothing", "attn", r"params:nothing names no parameter of AttnOnly"),
    ("layers", "quadratic", r"Quadratic has no stack of blocks"),
    ("heads", "quadratic", r"Quadratic has no attention module whose heads grokscope can slice"),
    ("heads", "llama", r"attention module lm.model.layers.0.self_attn \(LlamaAttention\) has no head layout"),
])
def test_bad_components_are_refused_in_one_line(spec, model, message):
    if model == "llama":
        transformers = pytest.importorskip("transformers")
        net = HFCausalLogits(transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=16, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
            intermediate_size=16, vocab_size=12, bos_token_id=0, eos_token_id=0, attn_implementation="eager")))
    else:
        net = AttnOnly() if model == "attn" else Quadratic(2, 2)
    ids = torch.randint(0, 12, (6, 8))
    data = Points(ids, ids) if model != "quadratic" else Points(torch.randn(6, 2), torch.randint(0, 2, (6,)))
    with pytest.raises(ProbeError, match=r"rllc.components: .*" + message) as e:
        p = RestrictedLLCProbe.make_params({"components": spec,
                                            "loss": "next_token" if model != "quadratic" else "ce"})
        RestrictedLLCProbe().check(net, data, p)
    assert "\n" not in str(e.value)
    with pytest.raises(ProbeError, match=r"rllc.lr must be > 0"):
        RestrictedLLCProbe.make_params({"lr": "0"})
    with pytest.raises(ProbeError, match=r"rllc.component_batch must be >= 0"):
        RestrictedLLCProbe.make_params({"component_batch": "-1"})


# ------------------------------------------------------------------ batching and the LM loss
@pytest.fixture(scope="module")
def lm_task():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (32, 8), generator=g)
    mask = torch.ones(32, 8, dtype=torch.bool)
    mask[::3, 6:] = False  # some rows end early
    torch.manual_seed(0)
    return AttnOnly().double().eval(), Points(ids, ids, mask, is_lm=True)


LM_SAMPLER = dict(lr=1e-4, gamma=100.0, n_chains=2, n_draws=8, n_burnin=2, dtype="float64")


def test_all_heads_in_one_run_equal_each_head_alone(lm_task):
    model, data = lm_task
    together = run(RestrictedLLCProbe, model, data, components="heads", **LM_SAMPLER)
    assert list(together.component.values) == ["head:0.0", "head:0.1", "head:1.0", "head:1.1"]
    for name in ["head:0.1", "head:1.0"]:
        alone = run(RestrictedLLCProbe, model, data, components=name, **LM_SAMPLER)
        np.testing.assert_allclose(together.loss_trace.sel(component=name).values,
                                   alone.loss_trace.sel(component=name).values, rtol=1e-10)
    assert np.all(together.n_params.values == 4 * 16 * 8)  # q, k, v rows and o columns of one head
    in_threes = run(RestrictedLLCProbe, model, data, components="heads", component_batch=3, **LM_SAMPLER)
    np.testing.assert_allclose(in_threes.loss_trace.values, together.loss_trace.values, rtol=1e-10)


def test_lm_loss_is_next_token_loss_on_the_real_tokens(lm_task):
    model, data = lm_task
    out = run(RestrictedLLCProbe, model, data, components="layer:1", **LM_SAMPLER)  # loss=auto on an LM task
    assert out.attrs["loss"] == "next_token"
    with torch.no_grad():
        expected = float(next_token_loss(model(data.x), data.x, data.mask_train))
        unmasked = float(next_token_loss(model(data.x), data.x))
    assert float(out.loss_init) == pytest.approx(expected, rel=1e-12) and expected != pytest.approx(unmasked)
    assert np.isfinite(out.llc.values).all()
    labels = lm_labels(data.x, data.mask_train)
    assert (labels[::3, 6:] == -1).all() and (labels[1, :] == data.x[1]).all()
    # L_n over chunks of rows with different numbers of real tokens is still the mean over all of them
    flat = FlatModel(model, llc_loss("next_token"))
    assert full_loss(flat, flat.theta, data.x, labels, chunk=5) == pytest.approx(expected, rel=1e-12)
    whole = run(LLCProbe, model, data, **LM_SAMPLER)
    assert whole.attrs["loss"] == "next_token" and float(whole.loss_init) == float(out.loss_init)


def test_probe_conforms(lm_task):
    model, data = lm_task
    params = RestrictedLLCProbe.make_params({"components": "heads,all", "n_chains": "2", "n_draws": "4",
                                              "n_burnin": "1", "batch_size": "8"})
    out = check_probe(get_probe("rllc"), model, data, params)
    assert out.loss_trace.dims == ("component", "chain", "draw") and out.loss_trace.shape == (5, 2, 4)
    assert out.warning.dtype == object


def test_probe_through_the_engine_stores_a_component_dim(tmp_path):
    """``grokscope probe --metrics rllc`` on a run of Nanda's transformer: the store holds every head as
    a ``component`` label beside the step, and the numbers are the functional core's on the checkpoint."""
    from click.testing import CliRunner

    from grokscope.cli import main
    from grokscope.engine.loading import load_into, read_state_dict
    from grokscope.engine.store_view import load_group
    from grokscope.models import build_model
    from grokscope.probes.llc import estimate_restricted_llc
    from grokscope import runs
    from grokscope.runs import checkpoint_path

    spec = {"arch": "transformer", "kwargs": {"p": 7, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 8}}
    data_spec = {"name": "modular", "kwargs": {"p": 7, "train_fraction": 0.5}, "seed": 0}
    run_dir = tmp_path / "run"
    runs.write_run_json(run_dir, spec, data_spec, {"loss": "ce"})
    torch.manual_seed(0)
    net = build_model(spec)
    for step in (0, 5):  # two checkpoints: the initial weights and a random step away from them
        runs.save_checkpoint(runs.checkpoint_path(run_dir, step), {k: v.clone() for k, v in net.state_dict().items()},
                             step)
        with torch.no_grad():
            for prm in net.parameters():
                prm.add_(0.1 * torch.randn_like(prm))
    args = ["--param", "rllc.n_chains=2", "--param", "rllc.n_draws=6", "--param", "rllc.n_burnin=2",
            "--param", "rllc.components=heads,all"]
    r = CliRunner().invoke(main, ["probe", str(run_dir), "--scheduler", "sync", "--metrics", "rllc", *args])
    assert r.exit_code == 0, r.output
    ds = load_group(run_dir / "probes.zarr", "run", "rllc")
    assert list(ds.component.values) == ["head:0.0", "head:0.1", "all"] and ds.done.all()
    assert ds.llc.dims == ("step", "component") and ds.loss_trace.dims == ("step", "component", "chain", "draw")
    from grokscope.datasets import load_dataset

    model = load_into(build_model(spec), read_state_dict(checkpoint_path(run_dir, 5)), "step 5").eval()
    x, y = load_dataset(data_spec).split("train")
    res = estimate_restricted_llc(model, x, y, llc_loss("ce"), ["heads", "all"], lr=1e-3, n_chains=2, n_draws=6,
                                  n_burnin=2)
    for k, m in enumerate(res):
        np.testing.assert_allclose(ds.loss_trace.sel(step=5).values[k], m["loss_trace"], rtol=1e-6)
    assert list(ds.n_params.sel(step=5).values) == [4 * 8 * 4, 4 * 8 * 4, sum(p.numel() for p in model.parameters())]
