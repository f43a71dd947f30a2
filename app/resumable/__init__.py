"""What the two resumable front doors (tus 1.0, IETF resumable uploads) share: a request
body that ends cleanly on a disconnect, a stall or a release request (so the bytes that
arrived are kept), and the holding of an upload's writer lease while a request appends."""
