"""Chunked audio upload service: takes a file in chunks, stores it in S3, tells the main service."""
