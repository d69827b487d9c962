"""Multi-label losses and decision rules behind a registry."""

from vidtag.heads.registry import create_loss, list_losses, register_loss

__all__ = ["create_loss", "list_losses", "register_loss"]
