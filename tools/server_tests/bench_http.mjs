// Benchmark (not a test): what the HTTP layer of `mpserve engine` costs.
//  1. Sequential: the same prompts, one at a time, through `mpserve generate --one-at-a-time`
//     and through POST /v1/completions; the difference per request is the HTTP layer's
//     added latency (parse, tokenize, queue hand-off, JSON, socket).
//  2. Concurrent: C clients in a closed loop for a fixed number of requests -> requests/s.
// Fixed seeds, a warm-up, R repetitions; prints median and spread and one summary line.
// Usage: node tools/server_tests/bench_http.mjs [--bin build/mpserve] [--requests 32]
//        [--max-tokens 16] [--concurrency 8] [--reps 3] [-- extra engine flags...]
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const engineArgs = dash >= 0 ? argv.slice(dash + 1) : [];
const opts = { bin: process.env.MPSERVE_BIN || 'build/mpserve', requests: 32, 'max-tokens': 16, concurrency: 8, reps: 3 };
for (let i = 0; i < (dash >= 0 ? dash : argv.length); i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const N = Number(opts.requests), T = Number(opts['max-tokens']), C = Number(opts.concurrency), R = Number(opts.reps);

const prompts = Array.from({ length: N }, (_, i) => `Request number ${i}: tell me about the number ${i * 7 + 3}`);
const promptsFile = path.join(os.tmpdir(), `mpserve-bench-${process.pid}.txt`);
fs.writeFileSync(promptsFile, prompts.join('\n') + '\n');

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs) => Math.max(...xs) - Math.min(...xs);

function generateSeconds() {
  const out = execFileSync(opts.bin, ['generate', '--prompts-file', promptsFile, '--max-tokens', String(T),
    '--ignore-eos', '--one-at-a-time', ...engineArgs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const m = out.match(/elapsed_s=([\d.]+)/);
  if (!m) throw new Error(`no elapsed_s in generate output:\n${out.slice(-500)}`);
  return Number(m[1]);
}

async function startServer() {
  const child = spawn(opts.bin, ['engine', '--port', '0', ...engineArgs], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    child.on('exit', (c) => reject(new Error(`engine exited with ${c}`)));
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/ready url=(\S+)/);
      if (m) resolve(m[1]);
    });
  });
  return { child, url };
}

async function complete(url, prompt) {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: T, ignore_eos: true, temperature: 0 }),
  });
  const j = await r.json();
  if (r.status !== 200 || j.usage.completion_tokens !== T) throw new Error(`bad response ${r.status} ${JSON.stringify(j)}`);
}

const { child, url } = await startServer();
try {
  for (const p of prompts.slice(0, 4)) await complete(url, p);  // warm-up
  generateSeconds();                                              // warm-up (page cache)
  const gen = [], seq = [], rps = [];
  for (let r = 0; r < R; r++) {
    gen.push(generateSeconds());
    let t0 = performance.now();
    for (const p of prompts) await complete(url, p);
    seq.push((performance.now() - t0) / 1000);
    t0 = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: C }, async () => {
      while (next < N) await complete(url, prompts[next++]);
    }));
    rps.push(N / ((performance.now() - t0) / 1000));
  }
  const addedMs = seq.map((s, i) => ((s - gen[i]) / N) * 1000);
  console.log(`generate one-at-a-time: median ${median(gen).toFixed(3)} s (spread ${spread(gen).toFixed(3)}) for ${N} requests`);
  console.log(`http sequential:        median ${median(seq).toFixed(3)} s (spread ${spread(seq).toFixed(3)})`);
  console.log(`http added latency:     median ${median(addedMs).toFixed(2)} ms/request (spread ${spread(addedMs).toFixed(2)})`);
  console.log(`http concurrency ${C}:    median ${median(rps).toFixed(1)} req/s (spread ${spread(rps).toFixed(1)})`);
  console.log(`bench_http: requests=${N} max_tokens=${T} concurrency=${C} reps=${R} generate_s=${median(gen).toFixed(3)} ` +
    `http_seq_s=${median(seq).toFixed(3)} added_latency_ms=${median(addedMs).toFixed(2)} req_per_s=${median(rps).toFixed(1)}`);
} finally {
  child.removeAllListeners('exit');
  child.kill('SIGTERM');
  fs.rmSync(promptsFile, { force: true });
}
