"""Providers deliver batches of emails: SendGrid, the outbox directory, and a recorder."""

from trigmail.providers.base import Accepted, BatchKey, Email, Provider, batch_key

__all__ = ["Accepted", "BatchKey", "Email", "Provider", "batch_key"]
