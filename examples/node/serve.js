// Serve a fusekit raw-input model (`fusekit export MODEL.onnx --raw-inputs -o served.onnx`) from Node.js.
//
//   node serve.js served.onnx rows.json          prints {"<task>": [probabilities]} for the rows
//   node serve.js served.onnx --http 8080        POST a JSON array of rows to http://localhost:8080/
//
// A row is an object keyed by the model's input names (the column names): text for a categorical
// column (integer codes too: "33"), a number for a dense one. The encoding (vocabularies, unseen
// values, scaling) happens inside the model, exactly as fusekit's FeatureSpec.encode does it.
'use strict';
const fs = require('fs');
const http = require('http');
const ort = require('onnxruntime-node');

// One tensor [rows] per input: string or float32, as the model declares it.
function feeds(session, rows) {
  const out = {};
  for (const input of session.inputMetadata) {
    const values = rows.map((row) => row[input.name]);
    if (input.type === 'string') {
      out[input.name] = new ort.Tensor('string', values.map((v) => (v === undefined || v === null ? '' : String(v))), [rows.length]);
    } else {
      out[input.name] = new ort.Tensor('float32', Float32Array.from(values, Number), [rows.length]);
    }
  }
  return out;
}

async function predict(session, rows) {
  const results = await session.run(feeds(session, rows));
  const out = {};
  for (const name of session.outputNames) out[name] = Array.from(results[name].data);
  return out;
}

async function main() {
  const [model, ...rest] = process.argv.slice(2);
  if (!model || rest.length === 0) {
    console.error('usage: node serve.js served.onnx rows.json | --http PORT');
    process.exit(2);
  }
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  if (rest[0] !== '--http') {
    const rows = JSON.parse(fs.readFileSync(rest[0], 'utf8'));
    process.stdout.write(JSON.stringify(await predict(session, rows)) + '\n');
    return;
  }
  const port = Number(rest[1] || 8080);
  http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      try {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(await predict(session, JSON.parse(body))));
      } catch (err) {  // a wrong type or a missing column: onnxruntime's message, as a 400
        res.writeHead(400, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ error: String(err.message || err) }));
      }
    });
  }).listen(port, () => console.error(`serving ${model} on http://localhost:${port}/`));
}

module.exports = { feeds, predict };
if (require.main === module) {
  main().catch((err) => { console.error(`serve.js: ${err.message || err}`); process.exit(1); });
}
