"""Kept for older imports: the torch twins now live in torch_twins.py."""

from torch_twins import (  # noqa: F401
    TorchSASRec,
    full_softmax_loss,
    infonce_ours,
    sampled_softmax_loss,
)
