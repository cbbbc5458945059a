// Drives a real `mpserve engine` with the official `openai` npm client: plain and streaming
// completions and chat, usage in streams, and errors surfaced as APIError.
// Env: MPSERVE_BIN (the binary), MPSERVE_NODE_MODULES (where `openai` is installed).
// Exits non-zero on any failure; the last line reads `N passed, M failed`.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const bin = process.env.MPSERVE_BIN || 'mpserve';
const nodeModules = process.env.MPSERVE_NODE_MODULES || path.resolve('third_party/npm/node_modules');
const { default: OpenAI, APIError } = await import(pathToFileURL(path.join(nodeModules, 'openai', 'index.mjs')).href);

function startServer() {
  const child = spawn(bin, ['engine', '--port', '0', '--max-model-len', '256', '--max-num-seqs', '8'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('no ready line within 60 s')), 60000);
    child.on('exit', (code) => reject(new Error(`mpserve engine exited early with ${code}`)));
    child.stdout.on('data', (d) => {
      out += d.toString();
      const m = out.match(/ready url=(http:\/\/[^\s]+) model=(\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1], model: m[2] });
      }
    });
  });
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const { child, url, model } = await startServer();
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });

const tests = {
  async completion_plain() {
    const r = await client.completions.create({ model, prompt: 'Hello', max_tokens: 5, ignore_eos: true });
    assert(r.object === 'text_completion', `object ${r.object}`);
    assert(r.choices.length === 1 && typeof r.choices[0].text === 'string', 'one text choice');
    assert(r.choices[0].finish_reason === 'length', `finish_reason ${r.choices[0].finish_reason}`);
    assert(r.usage.completion_tokens === 5, `usage ${JSON.stringify(r.usage)}`);
  },
  async completion_stream_matches_plain_for_greedy() {
    const body = { model, prompt: 'The quick brown fox', max_tokens: 16, temperature: 0, ignore_eos: true };
    const plain = await client.completions.create(body);
    const stream = await client.completions.create({ ...body, stream: true });
    let text = '';
    let finish = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.text;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert(text === plain.choices[0].text, `stream ${JSON.stringify(text)} != plain ${JSON.stringify(plain.choices[0].text)}`);
    assert(finish === 'length', `finish ${finish}`);
  },
  async chat_plain() {
    const r = await client.chat.completions.create({
      model,
      messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi!' }],
      max_tokens: 6,
      ignore_eos: true,
    });
    assert(r.object === 'chat.completion', `object ${r.object}`);
    assert(r.choices[0].message.role === 'assistant', 'assistant role');
    assert(typeof r.choices[0].message.content === 'string', 'content string');
    assert(r.usage.completion_tokens === 6 && r.usage.prompt_tokens > 0, `usage ${JSON.stringify(r.usage)}`);
  },
  async chat_stream_with_usage() {
    const body = { model, messages: [{ role: 'user', content: 'Count to three.' }], max_tokens: 8, temperature: 0, ignore_eos: true };
    const plain = await client.chat.completions.create(body);
    const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let role = null;
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        if (c.delta.role) role = c.delta.role;
        if (c.delta.content) text += c.delta.content;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert(role === 'assistant', `role ${role}`);
    assert(text === plain.choices[0].message.content, 'stream text equals plain text');
    assert(finish === 'length', `finish ${finish}`);
    assert(usage && usage.completion_tokens === 8, `usage ${JSON.stringify(usage)}`);
  },
  async chat_sampling_with_seed_is_reproducible() {
    const body = { model, messages: [{ role: 'user', content: 'Pick.' }], max_tokens: 8, temperature: 1, top_p: 0.9, top_k: 50, seed: 42, ignore_eos: true };
    const a = await client.chat.completions.create(body);
    const b = await client.chat.completions.create(body);
    assert(a.choices[0].message.content === b.choices[0].message.content, 'same seed, same text');
  },
  async bad_request_is_an_api_error_400() {
    try {
      await client.completions.create({ model, prompt: 'x', max_tokens: -1 });
    } catch (e) {
      assert(e instanceof APIError, `not an APIError: ${e}`);
      assert(e.status === 400, `status ${e.status}`);
      assert(/max_tokens/.test(e.message), `message ${e.message}`);
      return;
    }
    throw new Error('no error thrown');
  },
  async unknown_model_is_an_api_error_404() {
    try {
      await client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] });
    } catch (e) {
      assert(e instanceof APIError && e.status === 404, `got ${e}`);
      return;
    }
    throw new Error('no error thrown');
  },
  async models_list() {
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    assert(ids.length === 1 && ids[0] === model, `models ${ids}`);
  },
};

let passed = 0;
let failed = 0;
for (const [name, fn] of Object.entries(tests)) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}
child.removeAllListeners('exit');
child.kill('SIGTERM');
await new Promise((resolve) => child.on('exit', resolve));
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
