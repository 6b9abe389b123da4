"""Envoi: a self-hosted transactional email platform with a Mailgun-compatible API."""

__version__ = "0.1.0"
