"""Mailing lists (Mailgun's /v3/lists): lists, members, and their expansion at send."""
