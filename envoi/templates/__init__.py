"""Stored templates (Mailgun's templates API) and their rendering on send: see docs/templates.md."""
