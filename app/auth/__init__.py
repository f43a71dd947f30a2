"""Bearer-token verification against the main service's public key(s) -> Principal."""
