"""Adapters behind the domain's ports: SQL session store, disk staging, S3 writer."""
