"""The tus 1.0.0 front door (https://tus.io/protocols/resumable-upload): core, creation,
creation-with-upload, creation-defer-length, termination, expiration, checksum and
concatenation, at `TUS_BASE_PATH`, on the same `UploadService` as the chunk API.

An upload's id is its upload session id, so `/upload/<id>`, expiry, limits, the janitor
and the webhook apply unchanged. Bytes are staged as chunks of up to one S3 part each, in
order (chunk i starts where chunk i-1 ended), so the upload's offset is the sum of its
chunks and eager flush works as for the chunk API. One PATCH at a time per upload, across
replicas, by a database lease (`app.resumable.lease`). The request that brings the offset
to the length completes the upload through the core (audio check, S3, outbox).
The IETF draft (`app.ietf`) shares the endpoint, selected by `Upload-Draft-Interop-Version`.
"""
