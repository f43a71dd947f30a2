// tus-node-server with @tus/s3-store on loopback, the S3 peer the benchmark compares against
// (the engine behind Supabase Storage's resumable uploads). Its own defaults otherwise:
// 8 MiB preferred part size, 5 MiB minimum part, parts staged in os.tmpdir().
// Usage: node server-s3.mjs <port> <s3 endpoint> <bucket>
// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as the SDK reads them).
import http from "node:http";
import { Server } from "@tus/server";
import { S3Store } from "@tus/s3-store";

const [port, endpoint, bucket] = process.argv.slice(2);
const datastore = new S3Store({
  s3ClientConfig: { bucket, endpoint, region: "us-east-1", forcePathStyle: true },
});
const tus = new Server({ path: "/files", datastore });
http
  .createServer((req, res) => tus.handle(req, res))
  .listen(Number(port), "127.0.0.1", () => console.log("tus ready"));
