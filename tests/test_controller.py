"""The ATO controller: shapes, Gumbel-sigmoid, straight-through gradients, deterministic eval masks."""

from __future__ import annotations

import torch

from autotrainonce.ato import Controller

SIZES = [3, 5, 2]


def make(seed: int = 0, **kw) -> Controller:
    torch.manual_seed(seed)  # the GRU/head init uses the global RNG; the noise uses the private generator
    return Controller(SIZES, generator=torch.Generator().manual_seed(seed), **kw)


def test_shapes_and_ranges():
    ctrl = make()
    soft, hard = ctrl()
    assert [s.shape for s in soft] == [torch.Size([n]) for n in SIZES]
    assert [h.shape for h in hard] == [torch.Size([n]) for n in SIZES]
    for s, h in zip(soft, hard):
        assert bool(((s > 0) & (s < 1)).all())
        assert torch.equal(h.detach(), (s.detach() >= 0.5).float())


def test_architecture_defaults():
    ctrl = make()
    assert ctrl.embeddings.shape == (3, 64)
    assert "embeddings" in dict(ctrl.named_buffers())
    assert all(not n.startswith("embeddings") for n, _ in ctrl.named_parameters())
    # orthogonal rows: the fixed embeddings tell the groups apart equally well
    gram = ctrl.embeddings @ ctrl.embeddings.T
    torch.testing.assert_close(gram, torch.eye(3), atol=1e-5, rtol=0)
    assert ctrl.gru.bidirectional and ctrl.gru.hidden_size == 128 and ctrl.gru.input_size == 64
    assert ctrl.norm.normalized_shape == (256,)
    assert [h.weight.shape for h in ctrl.heads] == [torch.Size([n, 256]) for n in SIZES]
    assert all(h.bias is None for h in ctrl.heads)
    assert ctrl.temperature == 0.4 and ctrl.offset == 3.0


def test_eval_is_deterministic_threshold_of_noiseless_logits():
    ctrl = make(offset=0.0).eval()
    a = ctrl()[1]
    b = ctrl()[1]
    for x, y, logit in zip(a, b, ctrl.logits()):
        assert torch.equal(x, y)
        expected = (logit.detach() >= 0).float()
        if expected.sum() == 0:  # min_channels=1 keeps the best channel of an otherwise empty group
            expected[logit.argmax()] = 1.0
        assert torch.equal(x.detach(), expected)
    assert [m.dtype for m in ctrl.sample(deterministic=True)] == [torch.bool] * 3
    assert all(torch.equal(m, x.bool()) for m, x in zip(ctrl.sample(deterministic=True), a))


def test_training_mode_is_noisy_and_reproducible_from_the_generator():
    c1, c2 = make(offset=0.0), make(offset=0.0)  # offset 0: channels near the threshold, noise flips them
    draws1 = [torch.cat(c1()[1]).detach() for _ in range(5)]
    draws2 = [torch.cat(c2()[1]).detach() for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(draws1, draws2))
    assert any(not torch.equal(draws1[0], d) for d in draws1[1:])


def test_offset_starts_near_keep():
    ctrl = make().eval()
    soft, hard = ctrl()
    assert all(bool((h == 1).all()) for h in hard)
    assert all(float(s.detach().min()) > 0.99 for s in soft)


def test_straight_through_gradient_reaches_every_head():
    ctrl = make(offset=0.0)
    soft, hard = ctrl()
    weights = [torch.arange(n, dtype=torch.float32) + 1 for n in SIZES]
    loss = sum((h * w).sum() for h, w in zip(hard, weights))
    loss.backward()
    for head in ctrl.heads:
        assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in ctrl.gru.parameters())
    # forward value of the straight-through mask is the hard 0/1 mask
    for h, s in zip(hard, soft):
        torch.testing.assert_close(h.detach(), (s.detach() >= 0.5).float(), atol=1e-6, rtol=0)


def test_min_channels_keeps_at_least_one():
    ctrl = make(offset=-100.0).eval()
    _, hard = ctrl()
    assert [int(h.sum()) for h in hard] == [1, 1, 1]
    ctrl0 = make(offset=-100.0, min_channels=0).eval()
    assert [int(h.sum()) for h in ctrl0()[1]] == [0, 0, 0]


def test_keep_probabilities_are_the_draws_keep_frequencies():
    # offset 0: probabilities spread around one half; min_channels=0: no channel forced in (that rule is not
    # part of the probabilities)
    ctrl = make(offset=0.0, min_channels=0).train()
    probs = torch.cat(ctrl.keep_probabilities()).detach()
    freq = torch.stack([torch.cat(ctrl()[1]).detach() for _ in range(4000)]).mean(0)
    assert float((freq - probs).abs().max()) < 0.04  # 4000 draws: standard error <= 0.008
    assert float(probs.min()) < 0.45 and float(probs.max()) > 0.55  # not all at one half (the test can fail)


def test_head_init_scales_the_heads_and_nothing_else():
    base, zero, half = make(), make(head_init=0.0), make(head_init=0.5)
    for a, z, h in zip(base.heads, zero.heads, half.heads):
        assert float(z.weight.detach().abs().max()) == 0.0
        torch.testing.assert_close(h.weight, 0.5 * a.weight)
    # the same draws before and after the heads: the GRU (drawn first) and the noise generator are untouched
    for pa, pz in zip(base.gru.parameters(), zero.gru.parameters()):
        assert torch.equal(pa, pz)
    # zero heads: every channel of a group starts with the same logit (the offset), so no order is drawn at init
    assert all(torch.equal(s, torch.full_like(s, 3.0)) for s in zero.scores())
    assert any(float(s.std()) > 0 for s in base.scores())


def test_zero_heads_learn_an_order_from_the_loss():
    ctrl = make(offset=0.0, head_init=0.0)
    opt = torch.optim.AdamW(ctrl.parameters(), lr=1e-2)
    # keeping an even channel lowers the loss, keeping an odd one raises it
    worth = [torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n)]) for n in SIZES]
    for _ in range(20):
        soft, _ = ctrl()
        loss = -sum((s * w).sum() for s, w in zip(soft, worth))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for s, w in zip(ctrl.scores(), worth):
        assert float(s[w > 0].min()) > 0 > float(s[w < 0].max())  # learned from zero: kept vs dropped
