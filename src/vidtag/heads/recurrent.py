"""Recurrent label decoders: CNN-RNN, SCNN-RNN and the order-free RNN (RIA).

Tokens: labels 0..C-1, END = C, START = C+1 (input only). A label already emitted is masked
out of the next steps' softmax (in training as at inference), so a decoded set never repeats a
label; at most C labels, then END. Inference is a batched beam search (`beam_size=1`: greedy);
the per-tag score of the best beam is the highest probability that tag had at any of its steps
(in [0, 1], for mAP), and its set is the beam's labels.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidtag.heads.base import MultiLabelHead, keep_in_graph, positives
from vidtag.heads.registry import register_head

State = tuple[Tensor, ...]
IGNORE = -100


class LabelDecoder(nn.Module):
    """A GRU/LSTM over label tokens, conditioned on a vector `cond` (N, D) through its initial
    state (`init_state`) and/or at every output (`step_condition`, Wang et al.'s projection
    x_t = relu(U_o o_t + U_I I)); token logits = x_t . U_l^T with U_l the (tied) label
    embedding matrix, as in CNN-RNN."""

    def __init__(
        self,
        num_classes: int,
        cond_size: int,
        *,
        embed_size: int = 64,
        hidden_size: int = 256,
        cell: Literal["gru", "lstm"] = "gru",
        init_state: bool = True,
        step_condition: bool = True,
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', not {cell!r}")
        self.num_classes = num_classes
        self.end, self.start = num_classes, num_classes + 1
        self.hidden_size = hidden_size
        self.lstm = cell == "lstm"
        self.embed = nn.Embedding(num_classes + 2, embed_size)
        self.rnn: nn.Module = (nn.LSTM if self.lstm else nn.GRU)(
            embed_size, hidden_size, batch_first=True
        )
        n_state = 2 if self.lstm else 1
        self.init = nn.Linear(cond_size, n_state * hidden_size) if init_state else None
        self.out_h = nn.Linear(hidden_size, embed_size)
        self.out_c = nn.Linear(cond_size, embed_size, bias=False) if step_condition else None
        self.out_bias = nn.Parameter(torch.zeros(num_classes + 1))

    def initial_state(self, cond: Tensor) -> State:
        n_state = 2 if self.lstm else 1
        if self.init is None:
            z = cond.new_zeros(1, len(cond), self.hidden_size)
            return (z,) * n_state
        return tuple(s[None].contiguous() for s in torch.tanh(self.init(cond)).chunk(n_state, 1))

    def forward(
        self, tokens: Tensor, cond: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """Token logits (M, T, C+1) for input tokens (M, T) and the state after them."""
        state = self.initial_state(cond) if state is None else state
        emb = self.embed(tokens)
        if self.lstm:
            out, (h, c) = self.rnn(emb, (state[0], state[1]))
            new: State = (h, c)
        else:
            out, h = self.rnn(emb, state[0])
            new = (h,)
        x = self.out_h(out)
        if self.out_c is not None:
            x = x + self.out_c(cond)[:, None]
        x = torch.relu(x)
        return x @ self.embed.weight[: self.end + 1].T + self.out_bias, new

    @torch.no_grad()
    def beam_search(self, cond: Tensor, beam_size: int = 3) -> tuple[Tensor, Tensor, Tensor]:
        """Best beam per sample: label sequences (N, C) long padded with -1, per-tag scores
        (N, C) = max probability of each tag over the beam's steps, and the sequence's log
        probability (N,) (END included)."""
        n, c, b = len(cond), self.num_classes, max(1, beam_size)
        v = c + 1
        dev = cond.device
        cond_b = cond.repeat_interleave(b, 0)
        state = self.initial_state(cond_b)
        score = torch.full((n, b), float("-inf"), device=dev)
        score[:, 0] = 0.0  # one live beam at the start, so beams never duplicate
        tokens = torch.full((n * b,), self.start, dtype=torch.long, device=dev)
        emitted = torch.zeros(n, b, c, dtype=torch.bool, device=dev)
        finished = torch.zeros(n, b, dtype=torch.bool, device=dev)
        seq = torch.full((n, b, c), -1, dtype=torch.long, device=dev)
        length = torch.zeros(n, b, dtype=torch.long, device=dev)
        tag_p = torch.zeros(n, b, c, device=dev)
        done_row = torch.full((v,), float("-inf"), device=dev)
        done_row[self.end] = 0.0  # a finished beam continues only by END, at no cost
        base = (torch.arange(n, device=dev) * b)[:, None]
        for t in range(c + 1):
            logits, state = self(tokens[:, None], cond_b, state)
            logits = logits[:, 0].float().view(n, b, v)
            mask = torch.cat([emitted, emitted.new_zeros(n, b, 1)], 2)
            if t == c:
                mask[..., :c] = True
            logp = F.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
            live = ~finished[..., None]
            tag_p = torch.where(live, torch.maximum(tag_p, logp[..., :c].exp()), tag_p)
            logp = torch.where(live, logp, done_row)
            top, idx = (score[..., None] + logp).view(n, b * v).topk(b, 1)
            parent, tok = idx // v, idx % v
            flat = (base + parent).view(-1)
            state = tuple(s[:, flat] for s in state)
            rows = parent[..., None].expand(-1, -1, c)
            emitted, seq, tag_p = (
                emitted.gather(1, rows),
                seq.gather(1, rows),
                tag_p.gather(1, rows),
            )
            finished, length = finished.gather(1, parent), length.gather(1, parent)
            is_label = (tok < c) & ~finished
            emitted = emitted | (F.one_hot(tok.clamp(max=c - 1), c).bool() & is_label[..., None])
            at = length.clamp(max=c - 1)[..., None]
            seq = seq.scatter(
                2, at, torch.where(is_label[..., None], tok[..., None], seq.gather(2, at))
            )
            length = length + is_label.long()
            finished = finished | ~is_label
            score, tokens = top, tok.reshape(-1)
            if bool(finished.all()):
                break
        return seq[:, 0], tag_p[:, 0], score[:, 0]


def sequences_to_sets(seq: Tensor, num_classes: int) -> Tensor:
    """(N, C) bool sets of label sequences padded with -1."""
    out = torch.zeros(len(seq), num_classes + 1, dtype=torch.bool, device=seq.device)
    out.scatter_(1, seq.masked_fill(seq < 0, num_classes), True)
    return out[:, :num_classes]


class RecurrentHead(MultiLabelHead):
    """Shared inference of the recurrent heads: beam search over `decoder` from `condition`."""

    decoder: LabelDecoder

    def __init__(self, num_classes: int, embedding_size: int, beam_size: int) -> None:
        super().__init__(num_classes, embedding_size)
        self.beam_size = beam_size

    def condition(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """The vector the decoder is conditioned on (default: the embedding)."""
        return embedding.float()

    def beam_search(self, logits: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(label sequences (N, C) padded with -1, per-tag scores (N, C), log probabilities (N,))
        of the best beams."""
        return self.decoder.beam_search(self.condition(logits, embedding), self.beam_size)

    def decode(self, logits: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        seq, scores, _ = self.beam_search(logits, embedding)
        return scores, sequences_to_sets(seq, self.num_classes)

    def scores(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return self.decode(logits, embedding)[0]

    def predict(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return self.decode(logits, embedding)[1]


def emitted_before(labels: Tensor, num_classes: int) -> Tensor:
    """(N, T, C+1) bool: labels emitted at steps < t of target tokens (N, T) (END never masked)."""
    is_label = (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes) * is_label[..., None]
    before = (onehot.cumsum(1) - onehot) > 0
    return torch.cat([before, before.new_zeros(*before.shape[:2], 1)], 2)


class OrderedRNNHead(RecurrentHead):
    """Teacher-forced label sequences in a fixed order: by descending training frequency
    (`order="frequency"`, Wang et al.; from `label_counts`, or else counted online from the
    training targets seen so far) or by tag index (`order="fixed"`)."""

    label_counts: Tensor
    counts_given: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        order: Literal["frequency", "fixed"] = "frequency",
        label_counts: Any = None,
        beam_size: int = 3,
    ) -> None:
        super().__init__(num_classes, embedding_size, beam_size)
        if order not in ("frequency", "fixed"):
            raise ValueError(f"order must be 'frequency' or 'fixed', not {order!r}")
        self.order = order
        counts = torch.zeros(num_classes)
        if label_counts is not None:
            counts = torch.as_tensor(label_counts, dtype=torch.float32).reshape(num_classes)
        self.register_buffer("label_counts", counts)
        self.register_buffer("counts_given", torch.tensor(label_counts is not None))

    def priority(self, targets: Tensor) -> Tensor:
        """(C,) position of each label in the emission order (0 first)."""
        c = self.num_classes
        if self.order == "fixed":
            return torch.arange(c, device=targets.device)
        if self.training and not bool(self.counts_given):
            self.label_counts += positives(targets).sum(0).to(self.label_counts)
        rank = torch.argsort(-self.label_counts, stable=True)
        return torch.empty_like(rank).scatter_(0, rank, torch.arange(c, device=rank.device))

    def target_sequences(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forcing (inputs, targets), both (N, T): START, l_1..l_m / l_1..l_m, END,
        padded (targets with IGNORE); T = max m + 1."""
        pos = positives(targets)
        n, c = pos.shape
        key = self.priority(targets).to(pos.device).expand(n, c)
        order = torch.argsort(torch.where(pos, key, c + key), dim=1, stable=True)
        m = pos.sum(1)
        t = int(m.max()) + 1
        order = torch.cat([order, order.new_full((n, 1), c)], 1)[:, :t]
        step = torch.arange(t, device=pos.device)[None]
        tgt = torch.where(step < m[:, None], order, torch.where(step == m[:, None], c, IGNORE))
        inp = torch.cat([tgt.new_full((n, 1), c + 1), tgt[:, :-1].clamp(min=0)], 1)
        return inp, tgt

    def sequence_loss(self, cond: Tensor, targets: Tensor) -> Tensor:
        """Mean per-step cross-entropy of the teacher-forced sequence (END included)."""
        inp, tgt = self.target_sequences(targets)
        logits, _ = self.decoder(inp, cond)
        logits = logits.float().masked_fill(emitted_before(tgt, self.num_classes), float("-inf"))
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE)


@register_head("cnn_rnn")
class CNNRNNHead(OrderedRNNHead):
    """CNN-RNN (Wang, Yang, Mao, Huang, Huang & Xu, CVPR 2016, "CNN-RNN: A Unified Framework for
    Multi-label Image Classification"): label embeddings fed to a GRU/LSTM (zero initial state),
    its output joined with the clip embedding by a projection, token logits against the label
    embeddings; trained with per-step cross-entropy on the frequency-ordered label sequence
    with END (teacher forcing); beam search at inference. The network's logits are unused
    (zero gradient, `keep_in_graph`)."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        order: Literal["frequency", "fixed"] = "frequency",
        label_counts: Any = None,
        beam_size: int = 3,
        embed_size: int = 64,
        hidden_size: int = 256,
        cell: Literal["gru", "lstm"] = "gru",
    ) -> None:
        super().__init__(
            num_classes,
            embedding_size,
            order=order,
            label_counts=label_counts,
            beam_size=beam_size,
        )
        self.decoder = LabelDecoder(
            num_classes,
            embedding_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            cell=cell,
            init_state=False,
            step_condition=True,
        )

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        return keep_in_graph(self.sequence_loss(self.condition(logits, embedding), targets), logits)


@register_head("scnn_rnn")
class SCNNRNNHead(OrderedRNNHead):
    """SCNN-RNN (Liu, Xiang, Hospedales, Yang & Sun, CVPR 2017, "Semantic Regularisation for
    Recurrent Image Annotation"): a semantic concept layer p = sigmoid(W e + b) over the C tags,
    supervised with BCE, is the CNN-RNN interface: the RNN's initial state is tanh(U p) (no
    other image input). loss = BCE(concepts, y) + lambda * sequence cross-entropy (ordered as
    in CNN-RNN). `concepts="logits"` uses the network's own logits as the concept layer."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        concepts: Literal["layer", "logits"] = "layer",
        lam: float = 1.0,
        order: Literal["frequency", "fixed"] = "frequency",
        label_counts: Any = None,
        beam_size: int = 3,
        embed_size: int = 64,
        hidden_size: int = 256,
        cell: Literal["gru", "lstm"] = "gru",
    ) -> None:
        super().__init__(
            num_classes,
            embedding_size,
            order=order,
            label_counts=label_counts,
            beam_size=beam_size,
        )
        if concepts not in ("layer", "logits"):
            raise ValueError(f"concepts must be 'layer' or 'logits', not {concepts!r}")
        self.lam = lam
        self.concept = nn.Linear(embedding_size, num_classes) if concepts == "layer" else None
        self.decoder = LabelDecoder(
            num_classes,
            num_classes,
            embed_size=embed_size,
            hidden_size=hidden_size,
            cell=cell,
            init_state=True,
            step_condition=False,
        )

    def concept_logits(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return logits.float() if self.concept is None else self.concept(embedding.float())

    def condition(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return torch.sigmoid(self.concept_logits(logits, embedding))

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        z = self.concept_logits(logits, embedding)
        bce = F.binary_cross_entropy_with_logits(z, targets.float())
        loss = bce + self.lam * self.sequence_loss(torch.sigmoid(z), targets)
        return loss if self.concept is None else keep_in_graph(loss, logits)


@register_head("ria")
class RIAHead(RecurrentHead):
    """Order-free RNN annotator (Chen, Chen, Yeh & Wang, AAAI 2018, "Order-Free RNN with Visual
    Attention for Multi-Label Classification"; the recurrent-annotator line of Jin & Nakayama
    2016 "Annotation Order Matters" without a fixed order). No label order is imposed: at each
    step the candidate targets are the true labels not yet emitted; with
    `alignment="pla"` (the paper's predicted label alignment) the target is the candidate the
    model finds most probable, loss -log p(l*); with `alignment="set"`, -log sum_{l} p(l) over
    all candidates. The chosen label is fed back and masked; END is the target once none remain
    (so the output length is free). Mean over the steps taken. GRU initialised from and
    conditioned on the clip embedding (a pooled vector, so no spatial attention); beam search
    (`beam_size=1`: greedy) at inference. The network's logits are unused
    (zero gradient, `keep_in_graph`)."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        alignment: Literal["pla", "set"] = "pla",
        beam_size: int = 3,
        embed_size: int = 64,
        hidden_size: int = 256,
        cell: Literal["gru", "lstm"] = "gru",
    ) -> None:
        super().__init__(num_classes, embedding_size, beam_size)
        if alignment not in ("pla", "set"):
            raise ValueError(f"alignment must be 'pla' or 'set', not {alignment!r}")
        self.alignment = alignment
        self.decoder = LabelDecoder(
            num_classes,
            embedding_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            cell=cell,
            init_state=True,
            step_condition=True,
        )

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        cond = self.condition(logits, embedding)
        remaining = positives(targets).clone()
        n, c = remaining.shape
        emitted = torch.zeros(n, c + 1, dtype=torch.bool, device=remaining.device)
        active = torch.ones(n, dtype=torch.bool, device=remaining.device)
        tokens = torch.full((n, 1), c + 1, dtype=torch.long, device=remaining.device)
        state: State | None = None
        total = cond.new_zeros(())
        steps = 0
        for _ in range(int(remaining.sum(1).max()) + 1):
            logits_t, state = self.decoder(tokens, cond, state)
            logp = F.log_softmax(logits_t[:, 0].float().masked_fill(emitted, float("-inf")), -1)
            has = remaining.any(1, keepdim=True)
            # Candidate targets: the remaining true labels, or END once there are none.
            cand = torch.cat([remaining, ~has], 1)
            cand_logp = logp.masked_fill(~cand, float("-inf"))
            chosen = cand_logp.argmax(1)
            if self.alignment == "pla":
                nll = -logp.gather(1, chosen[:, None])[:, 0]
            else:
                nll = -torch.logsumexp(cand_logp, 1)
            total = total + (nll * active).sum()
            steps += int(active.sum())
            picked = F.one_hot(chosen, c + 1).bool() & active[:, None]
            emitted = emitted | (picked & (torch.arange(c + 1, device=picked.device) < c))
            remaining = remaining & ~picked[:, :c]
            active = active & has[:, 0]
            tokens = chosen[:, None]
        return keep_in_graph(total / max(1, steps), logits)
