"""Development tools: the dev sink MX (`envoi sink`), private Postgres/Redis and a supervisor
(stack), and `envoi up`, a whole region on one machine. Never part of a production process."""
