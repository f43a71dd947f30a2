"""Signed webhooks to the main service, delivered from a durable outbox.

An event row is written in the transaction that completes a session (see
`app.storage.sql_store`), so no completed upload goes unannounced. Delivery is at least
once: attempts are claimed with a lease so replicas never send one event at the same
time, every attempt is recorded, and a delivered event is never sent again.
"""
