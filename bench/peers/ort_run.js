#!/usr/bin/env node
'use strict';
// Runs an ONNX model with ONNX Runtime (CPU) on one .npy input and writes the
// first output as .npy.
//
//   node ort_run.js MODEL.onnx X.npy Y.npy [--threads N]
//
// Prints one JSON line: the ORT version, input and output names and shapes,
// and the run time.
const ort = require('onnxruntime-node');
const { readNpy, writeNpy } = require('./npy');

async function main() {
  const args = process.argv.slice(2);
  let threads = 0;
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--threads') threads = Number(args[++i]);
    else pos.push(args[i]);
  }
  if (pos.length !== 3 || !Number.isInteger(threads) || threads < 0) {
    console.error('usage: node ort_run.js MODEL.onnx X.npy Y.npy [--threads N]');
    process.exit(2);
  }
  const [model, inPath, outPath] = pos;
  const opts = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
  if (threads > 0) opts.intraOpNumThreads = threads;
  const session = await ort.InferenceSession.create(model, opts);
  const x = readNpy(inPath);
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', x.data, x.shape) };
  const t0 = process.hrtime.bigint();
  const res = await session.run(feeds);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const name = session.outputNames[0];
  const y = res[name];
  writeNpy(outPath, y.dims, y.data);
  console.log(JSON.stringify({ ort: ort.env.versions.common, input: session.inputNames[0], inputShape: x.shape, output: name, outputShape: y.dims, ms }));
}

main().catch((e) => { console.error(`ort_run: ${e.message || e}`); process.exit(1); });
