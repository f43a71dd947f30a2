"""The browser uploader page (`/uploader`), served only when `UPLOADER_PAGE=true`.

A third client of the service, beside the chunk API's clients and tus clients: a page with
Uppy's Dashboard and `@uppy/tus` that uploads audio to the tus endpoint with the bearer
token typed (or handed in the address's fragment) on the page, shows progress with pause
and resume, and once a file is stored shows its object URL from `GET /upload/<id>`.

Layout: `web/` is a small npm project (`package.json` and `package-lock.json` pin Uppy
and esbuild); `web/build.mjs` bundles `web/src/` into `web/dist/` (git-ignored, built by
`scripts/bootstrap`). `page.py` serves the HTML shell, with the settings the script needs
in a JSON block, and the two bundle files. The page holds no secret: the token lives
only in the form field. A page whose bundle was never built answers 503 saying how to
build it, rather than a blank page.
"""
