"""Development and test helpers: a local S3 server, a key pair, tokens. Never used by
the service itself in production."""
