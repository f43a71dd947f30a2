// Bundles src/main.js (Uppy's Dashboard and tus plugin, with their CSS) into dist/,
// which the service serves at /uploader/assets/. Run by scripts/bootstrap after `npm ci`.
import { rm } from 'node:fs/promises'
import * as esbuild from 'esbuild'

const outdir = new URL('./dist/', import.meta.url).pathname
await rm(outdir, { recursive: true, force: true })
await esbuild.build({
  entryPoints: { uploader: 'src/main.js' },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  // Browsers of the last few years; Uppy's own code needs no older ones.
  target: ['es2022', 'chrome111', 'firefox111', 'safari16'],
  outdir,
  logLevel: 'warning',
})
