// ONNX Runtime (onnxruntime-node: the MLAS CPU kernels that onnxruntime itself uses) as a peer.
//   NODE_PATH=$ORT_CACHE/node_modules node examples/peers/ort_bench.js MODEL.onnx RUNS THREADS INPUT.f32
// INPUT.f32: raw float32 [1,3,224,224]. One warm-up run, then RUNS timed runs; prints JSON last.
const ort = require('onnxruntime-node');
const fs = require('fs');
(async () => {
  const [model, runs, threads, input] = process.argv.slice(2);
  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: +threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential'});
  const load = Number(process.hrtime.bigint() - t0) / 1e9;
  const buf = fs.readFileSync(input);
  const x = new ort.Tensor('float32', new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4), [1, 3, 224, 224]);
  const times = [];
  let out;
  for (let r = 0; r <= +runs; r++) {
    const a = process.hrtime.bigint();
    out = await session.run({pixel_values: x});
    if (r > 0) times.push(Number(process.hrtime.bigint() - a) / 1e9);
  }
  const sorted = [...times].sort((p, q) => p - q);
  console.log(JSON.stringify({onnxruntime: require('onnxruntime-node/package.json').version, threads: +threads,
    times_s: times, median_s: sorted[Math.floor(sorted.length / 2)], load_s: load,
    cls_first8: Array.from(out.last_hidden_state.data.slice(0, 8))}));
})().catch(e => { console.error('error:', e.message); process.exit(1); });
