"""``bench fidelity``'s balanced mixes of U-Net architectures (issue 19): past its spread over size, the study grows
by architectures that mix keeping or dropping the first stage's layers, the innermost stage and each mid-block kind.
Torch-free."""

from __future__ import annotations

# The mixes' cells (first stage's layers kept?, innermost stage kept?, mid block), in an order whose every
# prefix of 6 holds each factor's levels equally often (a 12-cell design grown 6 at a time stays balanced).
MIX_CELLS = ((True, True, "none"), (False, False, "resnet"), (True, False, "cross_attn"),
             (False, True, "none"), (True, True, "resnet"), (False, False, "cross_attn"),
             (True, False, "none"), (False, True, "resnet"), (True, True, "cross_attn"),
             (False, False, "none"), (True, False, "resnet"), (False, True, "cross_attn"))


def mix_cell(genome, bound) -> tuple[bool, bool, str]:
    """(the first stage keeps all its layers, the innermost stage is kept, the mid block's kind)."""
    return (genome.layers[0] == bound.topology.layers[0], len(genome.layers) == bound.topology.n_stages,
            genome.mid)
