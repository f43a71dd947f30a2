"""The IETF "Resumable Uploads for HTTP" front door, on the tus endpoint, for the interop
versions 6 (draft -05, what URLSession on iOS 18.1+/macOS 15.1+ sends) and 8.

Selected by `Upload-Draft-Interop-Version`. It shares the tus machinery: uploads are upload
sessions, bytes are appended by `UploadService.append` under the same writer lease, and
the request that sends `Upload-Complete: ?1` with the last byte completes the upload
through the core and answers with the chunk API's complete response.

No `104 Upload Resumption Supported`: uvicorn gives an ASGI app no way to send an
informational response. So a client learns the upload's URL from the final response of
the creation request; one that wants to resume an interrupted creation creates the upload
with `Upload-Complete: ?0` and an empty body first (201 with Location), then appends.
"""
