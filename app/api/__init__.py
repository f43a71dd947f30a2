"""HTTP routes: parse the request, call the upload service, wrap the answer in the envelope."""
