from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidtag.heads import MultiLabelHead, create_head, create_loss, list_heads, list_losses
from vidtag.heads.c2ae import ranking_output_loss
from vidtag.heads.ranking import LSEPHead, RankingHead, lsep_loss, sample_negatives, warp_loss
from vidtag.heads.recurrent import (
    IGNORE,
    CNNRNNHead,
    LabelDecoder,
    RecurrentHead,
    RIAHead,
    emitted_before,
    sequences_to_sets,
)
from vidtag.registry import UnknownName

N, C, E = 24, 22, 32
HEADS = ("bce", "warp", "lsep", "c2ae", "cnn_rnn", "scnn_rnn", "ria")
# Small hidden sizes keep the CPU tests fast; the defaults are the papers' sizes.
SMALL: dict[str, dict[str, int]] = {
    "c2ae": {"hidden": 64},
    "cnn_rnn": {"hidden_size": 64, "embed_size": 32},
    "scnn_rnn": {"hidden_size": 64, "embed_size": 32},
    "ria": {"hidden_size": 64, "embed_size": 32},
}


def head(name: str, **kw: object) -> MultiLabelHead:
    return create_head(name, num_classes=C, embedding_size=E, **{**SMALL.get(name, {}), **kw})


def problem(n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Features x (n, E) and labels y (n, C) that x determines (1-5 labels a sample)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, E, generator=g)
    s = x @ torch.randn(E, C, generator=g)
    y = (s > 1.2 * s.std()).float()
    y[torch.arange(n), s.argmax(1)] = 1.0
    return x, y


def val(t: Tensor) -> float:
    return float(t.detach())


def jaccard(pred: Tensor, true: Tensor) -> float:
    t = true.bool()
    inter, union = (pred & t).sum(1).float(), (pred | t).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp(min=1), 1.0).mean())


def random_targets(n: int, seed: int, p: float = 0.3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, C, generator=g) < p).float()


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_and_creates_every_head() -> None:
    assert sorted(HEADS) == list_heads()
    for name in HEADS:
        h = create_head(name, num_classes=C, embedding_size=E)
        assert isinstance(h, MultiLabelHead)
        assert h.num_classes == C and h.embedding_size == E
    assert [h for h in HEADS if create_head(h, num_classes=C, embedding_size=E).exportable] == [
        "bce",
        "warp",
        "lsep",
    ]
    with pytest.raises(UnknownName):
        create_head("nope", num_classes=C, embedding_size=E)


def test_bce_loss_still_registered_and_equal_to_the_head() -> None:
    torch.manual_seed(0)
    assert "bce" in list_losses()
    logits, y = torch.randn(5, C), random_targets(5, 1)
    expected = F.binary_cross_entropy_with_logits(logits, y)
    assert torch.allclose(create_loss("bce")(logits, y), expected)
    assert torch.allclose(head("bce")(logits, torch.randn(5, E), y), expected)


@pytest.mark.parametrize("name", HEADS)
def test_untrained_scores_and_predict_shapes(name: str) -> None:
    torch.manual_seed(0)
    h = head(name).eval()
    logits, emb = torch.randn(6, C, requires_grad=True), torch.randn(6, E)
    loss = h(logits, emb, random_targets(6, 2))
    assert loss.ndim == 0 and math.isfinite(val(loss))
    loss.backward()  # the logits get a gradient (zero if ignored): DDP sees the classifier used
    assert logits.grad is not None
    logits = logits.detach()
    with torch.no_grad():
        scores, pred = h.decode(logits, emb)
    assert scores.shape == (6, C) and pred.shape == (6, C) and pred.dtype == torch.bool
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert torch.equal(h.scores(logits, emb), scores) and torch.equal(h.predict(logits, emb), pred)


# --- learning a tiny problem ----------------------------------------------------------------


@pytest.mark.parametrize("name", HEADS)
def test_head_learns_a_tiny_problem(name: str) -> None:
    torch.manual_seed(0)
    x, y = problem()
    net = nn.Linear(E, C)  # the "network": logits from the features; embedding = features
    h = head(name)
    opt = torch.optim.Adam([*net.parameters(), *h.parameters()], lr=1e-2)
    losses = []
    for _ in range(100):
        loss = h.loss(net(x), x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(val(loss))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < 0.25 * sum(losses[:10])
    h.eval()
    with torch.no_grad():
        scores, pred = h.decode(net(x), x)
    assert jaccard(pred, y) > 0.6, name
    # The scores rank a true tag first for most clips (they are usable for mAP).
    assert float(y[torch.arange(N), scores.argmax(1)].mean()) > 0.6


# --- WARP ----------------------------------------------------------------------------------


def warp_reference(s: Tensor, y: Tensor) -> Tensor:
    """Explicit loops over positive/negative pairs."""
    per = []
    for i in range(len(s)):
        pos = [j for j in range(C) if y[i, j] > 0.5]
        neg = [j for j in range(C) if y[i, j] <= 0.5]
        if not pos or not neg:
            continue
        total = s.new_zeros(())
        for p in pos:
            rank = sum(1 for n in neg if float((1 - s[i, p] + s[i, n]).detach()) > 0)
            weight = sum(1.0 / j for j in range(1, rank + 1))
            for n in neg:
                total = total + weight * torch.clamp(1 - s[i, p] + s[i, n], min=0)
        per.append(total / (len(pos) * len(neg)))
    return torch.stack(per).mean()


def test_warp_matches_loop_reference_with_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    s = (2 * torch.randn(7, C, generator=g, dtype=torch.float64)).requires_grad_()
    y = random_targets(7, 4).double()
    y[5] = 0.0  # no positive: skipped
    y[6] = 1.0  # no negative: skipped
    fast, slow = warp_loss(s, y), warp_reference(s, y)
    assert val(fast) == pytest.approx(val(slow), abs=1e-5)
    (g_fast,) = torch.autograd.grad(fast, s)
    (g_slow,) = torch.autograd.grad(slow, s)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)
    assert float(g_fast[5:].abs().sum()) == 0.0


def test_warp_rank_weight_grows_with_violations() -> None:
    y = torch.zeros(1, C)
    y[0, 0] = 1.0
    one = torch.full((1, C), -5.0)
    one[0, 0], one[0, 1] = 5.0, 4.5  # one negative violates the margin (by 0.5): L(1) = 1
    assert val(warp_loss(one, y)) == pytest.approx(0.5 / 21)
    two = one.clone()
    two[0, 2] = 4.5  # two violators: weight L(2) = 1.5 on both hinges
    assert val(warp_loss(two, y)) == pytest.approx(1.5 * (0.5 + 0.5) / 21)
    # all 21 negatives at the margin's edge: rank 21, weight H_21 on hinges of 1
    assert val(warp_loss(torch.zeros(1, C), y)) == pytest.approx(sum(1 / j for j in range(1, 22)))
    far = torch.full((1, C), -5.0)
    far[0, 0] = 5.0
    assert val(warp_loss(far, y)) == 0.0


# --- LSEP ----------------------------------------------------------------------------------


def lsep_reference(s: Tensor, y: Tensor) -> Tensor:
    per = []
    for i in range(len(s)):
        pos = [j for j in range(C) if y[i, j] > 0.5]
        neg = [j for j in range(C) if y[i, j] <= 0.5]
        if not pos or not neg:
            continue
        total = s.new_zeros(())
        for p in pos:
            for n in neg:
                total = total + torch.exp(s[i, n] - s[i, p])
        per.append(torch.log(1 + total))
    return torch.stack(per).mean()


def test_lsep_matches_loop_reference_with_gradients() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(6, C, generator=g, dtype=torch.float64).requires_grad_()
    y = random_targets(6, 6).double()
    y[5] = 0.0
    fast, slow = lsep_loss(s, y), lsep_reference(s, y)
    assert val(fast) == pytest.approx(val(slow), abs=1e-5)
    (g_fast,) = torch.autograd.grad(fast, s)
    (g_slow,) = torch.autograd.grad(slow, s)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)


def test_lsep_is_per_sample_not_one_log_over_the_batch() -> None:
    torch.manual_seed(0)
    s, y = torch.randn(2, C), random_targets(2, 7)
    y[:, 0] = 1.0
    y[:, 1] = 0.0
    both = lsep_loss(s, y)
    alone = (lsep_loss(s[:1], y[:1]) + lsep_loss(s[1:], y[1:])) / 2
    assert val(both) == pytest.approx(val(alone), abs=1e-6)
    pos, neg = y.bool(), ~y.bool()
    pair_sum = torch.zeros(())
    for i, p, n in itertools.product(range(2), range(C), range(C)):
        if pos[i, p] and neg[i, n]:
            pair_sum = pair_sum + torch.exp(s[i, n] - s[i, p])
    batch_log = torch.log(1 + pair_sum)  # the reference repository's one log over the batch
    assert abs(val(both) - val(batch_log)) > 1e-3


def test_lsep_is_stable_for_large_logits() -> None:
    torch.manual_seed(0)
    s = (1e4 * torch.randn(4, C)).requires_grad_()
    y = random_targets(4, 8)
    y[:, 0] = 1.0
    y[:, 1] = 0.0
    loss = lsep_loss(s, y)
    loss.backward()
    assert s.grad is not None
    assert math.isfinite(val(loss)) and bool(torch.isfinite(s.grad).all())


def test_lsep_negative_sampling_is_seeded() -> None:
    torch.manual_seed(0)
    s, y = torch.randn(8, C), random_targets(8, 9)
    y[:, 0] = 1.0

    def run(seed: int) -> list[float]:
        h = LSEPHead(C, E, neg_samples=3, seed=seed, count=False)
        return [val(h.loss(s, torch.zeros(8, E), y)) for _ in range(3)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert len(set(run(1))) > 1  # fresh draws each call, from the seeded sequence
    negs = sample_negatives(y, 3, torch.Generator().manual_seed(0))
    assert bool((negs & y.bool()).any()) is False
    assert negs.sum(1).tolist() == torch.clamp((1 - y).sum(1), max=3).long().tolist()
    full = LSEPHead(C, E, neg_samples=C, count=False).loss(s, torch.zeros(8, E), y)
    assert val(full) == pytest.approx(val(lsep_loss(s, y)), abs=1e-6)


def test_ranking_decision_count_and_thresholds() -> None:
    torch.manual_seed(0)
    h = head("lsep")
    assert isinstance(h, RankingHead)
    logits, emb = torch.randn(5, C), torch.randn(5, E)
    k = h.predicted_count(logits, emb)
    pred = h.predict(logits, emb)
    assert pred.sum(1).tolist() == k.tolist()
    top = logits.argsort(1, descending=True)
    for i in range(5):
        assert set(top[i, : int(k[i])].tolist()) == set(pred[i].nonzero()[:, 0].tolist())
    h.set_thresholds([1.1] * C)  # thresholds, once set, are intersected with the top-k
    assert not bool(h.predict(logits, emb).any())
    fixed = head("warp", count=False, top_k=3)
    assert fixed.predict(logits, emb).sum(1).tolist() == [3] * 5
    plain = head("warp", count=False)
    assert torch.equal(plain.predict(logits, emb), logits >= 0)


# --- C2AE ----------------------------------------------------------------------------------


def test_c2ae_output_loss_matches_pairs() -> None:
    torch.manual_seed(0)
    o, y = torch.rand(3, C, dtype=torch.float64), random_targets(3, 10).double()
    y[:, 0], y[:, 1] = 1.0, 0.0
    ref = []
    for i in range(3):
        pos = [j for j in range(C) if y[i, j] > 0.5]
        neg = [j for j in range(C) if y[i, j] <= 0.5]
        e = sum(math.exp(-5 * float(o[i, p] - o[i, q])) for p in pos for q in neg)
        ref.append(e / (len(pos) * len(neg)))
    assert val(ranking_output_loss(o, y)) == pytest.approx(sum(ref) / 3, abs=1e-9)


# --- recurrent heads -------------------------------------------------------------------------


def test_ordered_sequences_by_frequency_with_end() -> None:
    counts = torch.arange(C, dtype=torch.float32)  # label C-1 most frequent
    h = CNNRNNHead(C, E, label_counts=counts)
    y = torch.zeros(3, C)
    y[0, [2, 5, 20]] = 1.0
    y[1, 7] = 1.0
    inp, tgt = h.target_sequences(y)
    end, start = C, C + 1
    assert tgt.tolist() == [[20, 5, 2, end], [7, end, IGNORE, IGNORE], [end] + [IGNORE] * 3]
    assert inp[:, 0].tolist() == [start] * 3 and inp[0, 1:].tolist() == [20, 5, 2]
    fixed = CNNRNNHead(C, E, order="fixed")
    assert fixed.target_sequences(y)[1][0].tolist() == [2, 5, 20, end]
    online = CNNRNNHead(C, E)  # counts accumulate from the training targets
    online.train()
    online.target_sequences(y)
    assert online.label_counts[[2, 5, 7, 20]].tolist() == [1.0] * 4
    mask = emitted_before(tgt, C)
    assert mask[0, 2, [20, 5, 2]].tolist() == [True, True, False] and not bool(mask[..., C].any())


def sequence_log_prob(dec: LabelDecoder, cond: Tensor, seq: Tensor) -> Tensor:
    """log p(l_1..l_m, END) of label sequences (padded with -1), a label masked once emitted and
    END forced after C labels (the decoder's own rule), by teacher forcing."""
    n, c = seq.shape
    m = (seq >= 0).sum(1)
    tgt = torch.cat([seq, seq.new_full((n, 1), -1)], 1)
    tgt = torch.where(torch.arange(c + 1)[None] == m[:, None], c, tgt)
    inp = torch.cat([tgt.new_full((n, 1), c + 1), tgt[:, :-1].clamp(min=0)], 1)
    logits, _ = dec(inp, cond)
    mask = emitted_before(tgt, c)
    mask[:, c, :c] = True
    logp = F.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
    picked = logp.gather(2, tgt.clamp(min=0)[..., None])[..., 0]
    return torch.where(tgt >= 0, picked, 0.0).sum(1)


def peaked(dec: nn.Module) -> None:
    """Random decoder weights large enough for long and varied sequences."""
    for p in dec.parameters():
        nn.init.normal_(p, std=0.5)


@pytest.mark.parametrize("name", ["cnn_rnn", "scnn_rnn", "ria"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_search_returns_valid_label_sets(name: str, cell: str) -> None:
    torch.manual_seed(1)
    h = head(name, cell=cell, beam_size=4)
    assert isinstance(h, RecurrentHead)
    h.eval()
    peaked(h.decoder)
    logits, emb = torch.randn(16, C), torch.randn(16, E)
    seq, scores, logp = h.beam_search(logits, emb)
    assert seq.shape == (16, C) and scores.shape == (16, C)
    for row in seq.tolist():
        labels = [v for v in row if v >= 0]
        assert row == labels + [-1] * (C - len(labels))  # padding only at the end
        assert len(set(labels)) == len(labels) and all(0 <= v < C for v in labels)
    assert len({int(v) for v in (seq >= 0).sum(1)}) > 1  # varied lengths (END is learned)
    pred = sequences_to_sets(seq, C)
    assert pred.sum(1).tolist() == (seq >= 0).sum(1).tolist()
    assert torch.equal(h.predict(logits, emb), pred)
    assert bool((scores[pred] > 0).all())  # an emitted tag scores >= its emission probability
    with torch.no_grad():
        replay = sequence_log_prob(h.decoder, h.condition(logits, emb), seq)
    assert torch.allclose(logp, replay, atol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_search_is_exact_with_a_wide_beam_and_greedy_with_one(cell: str) -> None:
    """4 labels: 65 possible sequences, so a 65-wide beam is exhaustive search."""
    c = 4
    torch.manual_seed(4)
    dec = LabelDecoder(c, 3, embed_size=8, hidden_size=16, cell=cell)  # type: ignore[arg-type]
    peaked(dec)
    cond = torch.randn(6, 3)
    every = [
        list(p) + [-1] * (c - k) for k in range(c + 1) for p in itertools.permutations(range(c), k)
    ]
    assert len(every) == 65
    with torch.no_grad():
        all_lp = torch.stack(
            [sequence_log_prob(dec, cond, torch.tensor([s] * 6)) for s in every], 1
        )
        seq, _, lp = dec.beam_search(cond, beam_size=65)
        assert torch.allclose(lp, all_lp.max(1).values, atol=1e-5)
        assert torch.equal(seq, torch.tensor(every)[all_lp.argmax(1)])
        greedy_seq, _, greedy_lp = dec.beam_search(cond, beam_size=1)
        for i in range(6):  # step by step: the most probable allowed token
            state, tok, out = None, c + 1, []
            emitted: set[int] = set()
            for t in range(c + 1):
                lg, state = dec(torch.tensor([[tok]]), cond[i : i + 1], state)
                lg = lg[0, 0].clone()
                lg[list(emitted) if t < c else list(range(c))] = float("-inf")
                tok = int(lg.argmax())
                if tok == c:
                    break
                emitted.add(tok)
                out.append(tok)
            assert greedy_seq[i].tolist() == out + [-1] * (c - len(out))
        assert bool((lp >= greedy_lp - 1e-5).all())


def test_sequence_losses_are_the_decoders_sequence_likelihood() -> None:
    """Teacher forcing scores a sequence as beam search does (emitted labels masked); RIA's PLA
    follows the model's preferred order of the true labels. The two labels are the decoder's
    favourites, so that masking them once emitted matters."""
    torch.manual_seed(5)
    emb, logits = torch.randn(1, E), torch.zeros(1, C)

    def padded(*labels: int) -> Tensor:
        return torch.tensor([[*labels] + [-1] * (C - len(labels))])

    with torch.no_grad():
        for name in ("cnn_rnn", "ria"):
            h = head(name, order="fixed") if name == "cnn_rnn" else head(name)
            assert isinstance(h, RecurrentHead)
            peaked(h.decoder)
            cond = h.condition(logits, emb)
            first, _ = h.decoder(torch.tensor([[C + 1]]), cond)
            a, b = sorted(first[0, 0, :C].topk(2).indices.tolist())
            y = torch.zeros(1, C)
            y[0, [a, b]] = 1.0
            ab = float(sequence_log_prob(h.decoder, cond, padded(a, b)))
            ba = float(sequence_log_prob(h.decoder, cond, padded(b, a)))
            # fixed order: index order; PLA: the more probable label first
            expected = ab if name == "cnn_rnn" or first[0, 0, a] > first[0, 0, b] else ba
            assert val(h.loss(logits, emb, y)) == pytest.approx(-expected / 3, rel=1e-5)


def permuted_ria_loss(h: RIAHead, emb: Tensor, y: Tensor, perm: Tensor) -> float:
    """The loss of a copy of `h` whose tag indices are permuted by `perm` (tag-specific
    parameters permuted alike) on targets permuted the same way."""
    q = RIAHead(C, E, alignment=h.alignment, **SMALL["ria"])  # type: ignore[arg-type]
    q.load_state_dict(h.state_dict())
    with torch.no_grad():
        q.decoder.embed.weight[:C] = h.decoder.embed.weight[perm]
        q.decoder.out_bias[:C] = h.decoder.out_bias[perm]
    return val(q.loss(torch.zeros(len(y), C), emb, y[:, perm]))


@pytest.mark.parametrize("alignment", ["pla", "set"])
def test_ria_loss_is_invariant_to_label_order(alignment: str) -> None:
    torch.manual_seed(2)
    h = head("ria", alignment=alignment)
    assert isinstance(h, RIAHead)
    emb, y = torch.randn(6, E), random_targets(6, 11)
    base = val(h.loss(torch.zeros(6, C), emb, y))
    for seed in range(3):
        perm = torch.randperm(C, generator=torch.Generator().manual_seed(seed))
        assert permuted_ria_loss(h, emb, y, perm) == pytest.approx(base, rel=1e-5)
    # Contrast: CNN-RNN with a fixed (index) order does depend on how labels are listed.
    torch.manual_seed(2)
    ordered = CNNRNNHead(C, E, order="fixed", **SMALL["cnn_rnn"])  # type: ignore[arg-type]
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(0))
    q = CNNRNNHead(C, E, order="fixed", **SMALL["cnn_rnn"])  # type: ignore[arg-type]
    q.load_state_dict(ordered.state_dict())
    with torch.no_grad():
        q.decoder.embed.weight[:C] = ordered.decoder.embed.weight[perm]
        q.decoder.out_bias[:C] = ordered.decoder.out_bias[perm]
    a = val(ordered.loss(torch.zeros(6, C), emb, y))
    assert val(q.loss(torch.zeros(6, C), emb, y[:, perm])) != pytest.approx(a, rel=1e-3)


def test_ria_set_alignment_reduces_to_pla_for_single_labels() -> None:
    torch.manual_seed(3)
    pla, st = head("ria", alignment="pla"), head("ria", alignment="set")
    st.load_state_dict(pla.state_dict())
    emb = torch.randn(5, E)
    y = F.one_hot(torch.arange(5), C).float()
    logits = torch.zeros(5, C)
    assert val(pla.loss(logits, emb, y)) == pytest.approx(val(st.loss(logits, emb, y)))
    y[:, 10] = 1.0  # two candidates: the set loss is below the PLA loss
    assert val(st.loss(logits, emb, y)) < val(pla.loss(logits, emb, y))


def test_scnn_rnn_concepts_from_network_logits() -> None:
    torch.manual_seed(0)
    h = head("scnn_rnn", concepts="logits")
    logits = torch.randn(4, C, requires_grad=True)
    y = random_targets(4, 12)
    h.loss(logits, torch.randn(4, E), y).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
