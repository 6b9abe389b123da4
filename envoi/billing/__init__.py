"""Billing: plans (what an account may send and keep), quotas at accept, usage, and Stripe as the system
of record for money."""
