// Uploads one file with tus-js-client (the real npm package) and prints one JSON line:
// {"url": ...} on success, {"error": ..., "status": N} on failure (exit code 1).
// Usage: node upload.mjs '<json options>'
//   {endpoint, token, file, metadata, chunkSize?, parallelUploads?, uploadLengthDeferred?,
//    retryDelays?}
import { readFileSync } from "node:fs";
import * as tus from "tus-js-client";

const options = JSON.parse(process.argv[2]);
const data = readFileSync(options.file);
const upload = new tus.Upload(data, {
  endpoint: options.endpoint,
  headers: { Authorization: `Bearer ${options.token}` },
  metadata: options.metadata,
  chunkSize: options.chunkSize ?? Infinity,
  parallelUploads: options.parallelUploads ?? 1,
  uploadLengthDeferred: options.uploadLengthDeferred ?? false,
  retryDelays: options.retryDelays ?? [],
  removeFingerprintOnSuccess: true,
  onError(error) {
    const status = error.originalResponse ? error.originalResponse.getStatus() : null;
    console.log(JSON.stringify({ error: String(error.message).slice(0, 500), status }));
    process.exit(1);
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url }));
  },
});
upload.start();
