"""What is particular to Hydra; the contract every model keeps is in test_model_contract.py."""

import weakref

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hydra.layers.hydra_layer import HydraLayer
from recbole_hydra.layers.rope import RotaryEmbedding
from recbole_hydra.model.hydra import Hydra
from tests.model_helpers import SMALL_HYDRA, build_model, random_batch


@pytest.fixture
def hydra(tmp_path):
    return build_model(tmp_path, "Hydra", **SMALL_HYDRA)


def test_scores_use_the_last_real_position(hydra):
    # full_sort_predict computes only the last position in the last layer: same scores as
    # scoring forward's output there
    model = hydra[0].double().eval()
    seq, lengths = random_batch(model)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    query = model(seq, lengths)[torch.arange(len(seq)), lengths - 1]
    expected = (
        torch.nn.functional.normalize(query, dim=-1)
        @ torch.nn.functional.normalize(model.item_embedding.weight, dim=-1).T
        / model.temperature
    )
    torch.testing.assert_close(
        model.full_sort_predict(batch).double(), expected, rtol=1e-9, atol=1e-9
    )


def test_evaluation_in_row_blocks_gives_the_same_scores(hydra):
    model = hydra[0].eval()
    seq, lengths = random_batch(model, batch=5)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    with torch.no_grad():
        whole = model.full_sort_predict(batch)
        model.eval_tokens_per_pass = 2 * seq.size(1)  # two rows per pass: blocks of 2, 2, 1
        blocks = model.full_sort_predict(batch)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


def test_explicit_head_size_may_differ_from_hidden_size(tmp_path):
    model, train, _, _ = build_model(tmp_path, "Hydra", **{**SMALL_HYDRA, "head_size": 6})
    assert isinstance(model, Hydra)
    batch = next(iter(train))
    assert model(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]).shape[-1] == 16


def test_layer_checkpointing_same_loss_and_gradients_less_kept(tmp_path):
    """``layer_checkpointing`` recomputes the layers in backward: the same loss and gradients
    (dropout included: the recomputation replays the same random draws), and autograd keeps
    less for backward."""
    model, train, _, _ = build_model(
        tmp_path, "Hydra", **{**SMALL_HYDRA, "dropout_prob": 0.3, "hidden_dropout_prob": 0.2}
    )
    model = model.double().train()
    batch = next(iter(train))
    results = []
    model.checkpoint_slices = 1  # the batch's dropout draws, as without checkpointing
    for flag in (False, True):
        model.layer_checkpointing = flag
        model.zero_grad()
        kept = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        torch.manual_seed(3)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.calculate_loss(batch)
        loss.backward()
        results.append(
            (loss.detach(), [p.grad.clone() for p in model.parameters()], sum(kept.values()))
        )
    (loss, grads, kept), (loss_ckpt, grads_ckpt, kept_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-12, atol=1e-12)
    for g_ckpt, g in zip(grads_ckpt, grads):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-10, atol=1e-12)
    assert kept_ckpt < kept / 2, (kept_ckpt, kept)


def test_checkpoint_slices_same_result_one_slice_recomputed_at_a_time(tmp_path):
    """``checkpoint_slices`` checkpoints each slice of sequences on its own: the same loss and
    gradients as one slice, and in backward each slice's recomputed activations are freed before
    the next slice is recomputed, so the most alive at once is one slice's."""
    model, train, _, _ = build_model(
        tmp_path, "Hydra", **{**SMALL_HYDRA, "dropout_prob": 0.3, "layer_checkpointing": True}
    )
    model = model.double().train()
    batch = next(iter(train))
    assert len(batch) >= 8
    recomputed = []  # (weak reference, bytes) of each latent Mamba output made in backward
    in_backward = [False]
    peak = [0]

    def record(module, inputs, output):
        if in_backward[0]:
            recomputed.append((weakref.ref(output), output.untyped_storage().nbytes()))
            alive = sum(size for ref, size in recomputed if ref() is not None)
            peak[0] = max(peak[0], alive)

    model.layers[0].latent_mamba.register_forward_hook(record)
    results = []
    for slices in (1, 4):
        model.checkpoint_slices = slices
        model.zero_grad()
        recomputed.clear()
        peak[0] = 0
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        in_backward[0] = True
        loss.backward()
        in_backward[0] = False
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), grads, len(recomputed), peak[0]))
    (loss, grads, n_whole, peak_whole), (loss_4, grads_4, n_sliced, peak_sliced) = results
    torch.testing.assert_close(loss_4, loss, rtol=1e-12, atol=1e-12)
    for g_4, g in zip(grads_4, grads):
        torch.testing.assert_close(g_4, g, rtol=1e-10, atol=1e-12)
    assert (n_whole, n_sliced) == (1, 4)
    assert peak_sliced <= peak_whole / 2, (peak_sliced, peak_whole)


def test_saved_activations_detector_sees_what_autograd_keeps(tmp_path):
    """The weak references of the test above do see a kept activation: without checkpointing,
    every latent Mamba output of the forward is still alive (saved) until backward."""
    model, train, _, _ = build_model(tmp_path, "Hydra", **SMALL_HYDRA)
    outputs = []
    model.layers[0].latent_mamba.register_forward_hook(
        lambda module, inputs, output: outputs.append(weakref.ref(output))
    )
    loss = model.train().calculate_loss(next(iter(train)))
    assert outputs and all(ref() is not None for ref in outputs)
    del loss
    assert all(ref() is None for ref in outputs)


ABLATIONS = [
    dict(),  # the paper's layer
    dict(rope_on_z=False),
    dict(gate_with_z=False),
    dict(norm="post"),
    dict(rope_on_z=False, norm="post"),
]


def rms(x, norm):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


def reference_layer(layer, h, pre_norm, rope_on_z=True, gate_with_z=True, norm="pre"):
    """Eq 5-12 written out in float64 from the layer's own weights (the latent Mamba-2 heads are
    checked against mamba's code in test_mamba2_layers.py), with the ablations switched."""
    silu = torch.nn.functional.silu
    b, length, _ = h.shape
    v, dc = layer.n_heads, layer.head_size
    h_in = rms(h, layer.input_norm) if norm == "pre" and pre_norm else h
    xz = silu(h_in @ layer.w_xz.weight.T)
    x = xz[..., : v * dc]
    y = layer.latent_mamba(x)
    if gate_with_z:
        z = xz[..., v * dc :].reshape(b, length, v, dc)
        if rope_on_z:  # eq 6: channels (j, j + dc/2) of each head turned by t * 10000^(-2j/dc)
            t = torch.arange(length, dtype=h.dtype).view(1, length, 1, 1)
            angle = t * 10000.0 ** (-torch.arange(0, dc, 2, dtype=h.dtype) / dc)
            first, second = z[..., : dc // 2], z[..., dc // 2 :]
            z = torch.cat(
                [
                    first * angle.cos() - second * angle.sin(),
                    first * angle.sin() + second * angle.cos(),
                ],
                -1,
            )
        y = y * z.reshape(b, length, v * dc) / v**0.5
    y_res = y @ layer.w_out.weight.T + h
    if norm == "post":
        y_res = rms(y_res, layer.mixer_post_norm)
    ffn_in = rms(y_res, layer.ffn_norm) if norm == "pre" else y_res
    out = layer.ffn(ffn_in) + y_res
    return rms(out, layer.ffn_post_norm) if norm == "post" else out


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre_norm", "first_layer"])
@pytest.mark.parametrize(
    "ablation", ABLATIONS, ids=lambda a: "-".join(map(str, a.values())) or "paper"
)
def test_layer_equals_eq_5_to_12_and_its_fast_paths(ablation, pre_norm):
    torch.manual_seed(0)
    layer = HydraLayer(8, 2, 4, 6, pre_norm=pre_norm, d_state=5, chunk_size=4, **ablation)
    layer = layer.double().eval()
    for module in layer.modules():  # norms away from 1, so that a skipped norm shows
        if hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    h = torch.randn(3, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        full = layer(h)
        # RoPE's frequencies are kept in float32: 1e-6 rather than float64's 1e-12
        want = reference_layer(layer, h, pre_norm, **ablation)
        torch.testing.assert_close(full, want, rtol=1e-6, atol=1e-6)
        lengths = torch.tensor([9, 5, 1])
        last = layer.forward_last(h, lengths)
        torch.testing.assert_close(last, full[torch.arange(3), lengths - 1])
        _, cache = layer(h[:, :4], lengths=torch.full((3,), 4), return_cache=True)
        stepped, _ = layer.step(h[:, 4], torch.full((3,), 4), cache)
        torch.testing.assert_close(stepped, full[:, 4])


def test_ablations_change_the_layer():
    """Each switch is read: the same weights give another output."""
    torch.manual_seed(0)
    h = torch.randn(2, 7, 8, dtype=torch.float64)
    outputs = []
    for ablation in ABLATIONS[:4]:
        torch.manual_seed(1)
        layer = HydraLayer(8, 2, 4, 6, d_state=5, chunk_size=4, **ablation).double().eval()
        with torch.no_grad():
            outputs.append(layer(h))
    for i in range(1, 4):
        assert not torch.allclose(outputs[0], outputs[i])


def test_bad_norm_placement_is_a_clear_error():
    with pytest.raises(ValueError, match="norm must be one of"):
        HydraLayer(8, 2, 4, 6, norm="sandwich", d_state=5, chunk_size=4)


def test_rope_rotates_each_pair_and_its_backward_is_the_inverse_rotation():
    """RoPE against a loop over (position, head, pair) in float64, gradients against autograd of
    that loop, and the kept cos/sin table against lengths and dtypes that change between calls."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(6).double()
    freq = rope.inv_freq  # the module's own frequencies (float32 values, see the layer test)

    def reference(x):
        rows = []
        for t in range(x.shape[1]):
            heads = []
            for h in range(x.shape[2]):
                first, second = [], []
                for j in range(3):
                    a, b, angle = x[:, t, h, j], x[:, t, h, j + 3], t * freq[j]
                    first.append(a * torch.cos(angle) - b * torch.sin(angle))
                    second.append(b * torch.cos(angle) + a * torch.sin(angle))
                heads.append(torch.stack(first + second, -1))
            rows.append(torch.stack(heads, 1))
        return torch.stack(rows, 1)

    for length in (4, 7, 2):  # the table grows, then a shorter call reads its first rows
        x = torch.randn(2, length, 3, 6, dtype=torch.float64, requires_grad=True)
        got, want = rope(x), reference(x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(want)
        (g_got,) = torch.autograd.grad(got, x, grad)
        (g_want,) = torch.autograd.grad(want, x, grad)
        torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)
        with torch.no_grad():  # the no-grad path and explicit positions give the same rotation
            torch.testing.assert_close(rope(x), want)
            torch.testing.assert_close(rope(x, positions=torch.arange(length)), want)
    single = rope(x.float())  # a dtype change rebuilds the table in that dtype
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, want.float(), rtol=1e-5, atol=1e-6)
    shifted = rope(x, positions=torch.arange(5, 5 + x.shape[1]))
    assert not torch.allclose(shifted, rope(x))
