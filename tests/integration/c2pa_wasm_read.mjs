// An independent C2PA reader (c2pa-rs compiled to wasm, from npm) for the tests:
//   node c2pa_wasm_read.mjs FILE.mp4 [ROOT.pem]  ->  one JSON line {state, failures, assertions}
import * as fs from 'node:fs';
import { initSync, WasmReader } from '@contentauth/c2pa-wasm';

initSync({ module: fs.readFileSync(new URL('./node_modules/@contentauth/c2pa-wasm/pkg/c2pa_bg.wasm', import.meta.url)) });
const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
const settings = process.argv[3]
  ? JSON.stringify({ trust: { trust_anchors: fs.readFileSync(process.argv[3], 'utf8') } })
  : null;
const reader = await WasmReader.fromBytes('video/mp4', bytes, settings);
const store = JSON.parse(reader.json());
const active = store.manifests?.[store.active_manifest] ?? {};
console.log(JSON.stringify({
  state: store.validation_state,
  failures: (store.validation_results?.activeManifest?.failure ?? []).map((f) => f.code),
  assertions: (active.assertions ?? []).map((a) => a.label),
}));
