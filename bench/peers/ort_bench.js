#!/usr/bin/env node
'use strict';
// Times ONNX Runtime (CPU) on an ONNX model, with the intra-op thread count
// set, on the input Kiln's standalone --bench uses (x[i] = sin(i)).
//
//   node ort_bench.js MODEL.onnx --threads T [--iters N] [--warmup W]
//       prints one JSON line: {ort, threads, times_ms: [...], median_ms}
//   node ort_bench.js MODEL.onnx --threads T --serve
//       loads the model, prints {"ready":...} and then answers each line
//       "run K" on stdin with one JSON line {"times_ms": [K timings]};
//       "dump Y.npy" runs once and writes the output (answering {"ok":true});
//       "quit" (or end of input) exits. The peer harness (bench/peers, Go)
//       uses this to alternate Kiln and ORT in one run.
const readline = require('node:readline');
const ort = require('onnxruntime-node');
const { writeNpy } = require('./npy');

function usage() {
  console.error('usage: node ort_bench.js MODEL.onnx --threads T [--iters N] [--warmup W] [--shape NxCxHxW] [--serve]');
  process.exit(2);
}

async function main() {
  const args = process.argv.slice(2);
  let threads = 0; let iters = 20; let warmup = 3; let serve = false; let model = ''; let given = null;
  for (let i = 0; i < args.length; i++) {
    switch (args[i]) {
      case '--threads': threads = Number(args[++i]); break;
      case '--iters': iters = Number(args[++i]); break;
      case '--warmup': warmup = Number(args[++i]); break;
      case '--serve': serve = true; break;
      // --shape 8x3x224x224: the input shape, for models with a symbolic
      // (batch) dimension; it must agree with the model's fixed dimensions.
      case '--shape': given = String(args[++i]).split('x').map(Number); break;
      default:
        if (model !== '' || args[i].startsWith('-')) usage();
        model = args[i];
    }
  }
  if (model === '' || !(threads >= 1) || !(iters >= 1) || !(warmup >= 0)) usage();
  // One intra-op pool of T threads (the calling thread counts as one),
  // sequential execution, all graph optimizations: ORT's fastest CPU setup.
  const session = await ort.InferenceSession.create(model, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const meta = session.inputMetadata ? session.inputMetadata[0] : null;
  let shape = meta && meta.shape ? meta.shape : null;
  if (given) {
    if (given.some((d) => !(Number.isInteger(d) && d > 0)) || (shape && (shape.length !== given.length ||
        shape.some((d, k) => typeof d === 'number' && d !== given[k])))) {
      throw new Error(`--shape ${given.join('x')} does not fit the model input ${JSON.stringify(shape)}`);
    }
    shape = given;
  }
  if (!shape || shape.some((d) => typeof d !== 'number')) throw new Error('model input has no fixed shape (give --shape)');
  const n = shape.reduce((a, d) => a * d, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(i);
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, shape) };
  const once = async () => {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  for (let i = 0; i < warmup; i++) await once();
  if (!serve) {
    const times = [];
    for (let i = 0; i < iters; i++) times.push(await once());
    const s = [...times].sort((a, b) => a - b);
    console.log(JSON.stringify({ ort: ort.env.versions.common, threads, shape, times_ms: times, median_ms: s[s.length >> 1] }));
    return;
  }
  console.log(JSON.stringify({ ready: true, ort: ort.env.versions.common, threads, shape }));
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    const [cmd, arg] = line.trim().split(/\s+/);
    if (cmd === 'quit') break;
    if (cmd === 'dump' && arg) {
      const res = await session.run(feeds);
      const y = res[session.outputNames[0]];
      writeNpy(arg, y.dims, y.data);
      console.log(JSON.stringify({ ok: true, shape: y.dims }));
      continue;
    }
    if (cmd !== 'run' || !(Number(arg) >= 1)) {
      console.log(JSON.stringify({ error: `bad command ${JSON.stringify(line)}` }));
      continue;
    }
    const times = [];
    for (let i = 0; i < Number(arg); i++) times.push(await once());
    console.log(JSON.stringify({ times_ms: times }));
  }
  rl.close();
}

main().catch((e) => { console.error(`ort_bench: ${e.message || e}`); process.exit(1); });
