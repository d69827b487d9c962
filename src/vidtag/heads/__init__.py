"""Multi-label losses and frameworks ("heads") behind registries.

`create_head(name, num_classes=C, embedding_size=E)` builds one of: bce (binary relevance),
warp, lsep (pairwise ranking + label decision), c2ae (canonical-correlated autoencoder),
cnn_rnn, scnn_rnn (ordered recurrent decoders), ria (order-free recurrent decoder); every head
implements `MultiLabelHead` (loss / scores / predict on the network's (logits, embedding)).
"""

from vidtag.heads import binary as _binary  # noqa: F401  (registers its heads)
from vidtag.heads import c2ae as _c2ae  # noqa: F401
from vidtag.heads import ranking as _ranking  # noqa: F401
from vidtag.heads import recurrent as _recurrent  # noqa: F401
from vidtag.heads.base import MultiLabelHead
from vidtag.heads.registry import (
    create_head,
    create_loss,
    list_heads,
    list_losses,
    register_head,
    register_loss,
)

__all__ = [
    "MultiLabelHead",
    "create_head",
    "create_loss",
    "list_heads",
    "list_losses",
    "register_head",
    "register_loss",
]
