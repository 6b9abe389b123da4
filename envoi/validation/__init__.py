"""Address validation, Mailgun's /v4/address/validate: single addresses and bulk jobs (docs/validation.md)."""
