"""The upload domain: sessions, their states, staging and assembly rules.

It knows nothing of HTTP, SQL or S3: it talks to the ports declared in `ports.py`.
"""
