// Test fixtures: fake Qwen3 model directories (real safetensors layout, random bytes) and
// the test copy of the npm package (pkg-src + the mock wasm module).

import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');

/** A safetensors file of about `bytes` bytes: U32 tensors of up to 1 MiB each. */
function writeSafetensors(file, bytes, prefix) {
  const tensors = {};
  let offset = 0;
  for (let i = 0; offset < bytes; i++) {
    const n = Math.min(1 << 20, bytes - offset) & ~3 || 4;
    tensors[`${prefix}.${i}.weight`] = { dtype: 'U32', shape: [n / 4], data_offsets: [offset, offset + n] };
    offset += n;
  }
  tensors.__metadata__ = { format: 'mlx' };
  let header = Buffer.from(JSON.stringify(tensors));
  const pad = (8 - (header.length % 8)) % 8;
  header = Buffer.concat([header, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, len);
  fs.writeSync(fd, header);
  for (let done = 0; done < offset; ) {
    const n = Math.min(4 << 20, offset - done);
    fs.writeSync(fd, crypto.randomBytes(n));
    done += n;
  }
  fs.closeSync(fd);
}

/**
 * Writes a model directory. `shards`: sizes of the weight files (one → model.safetensors,
 * more → model-0000k-of-0000n.safetensors with an index). `mock`: the mock engine's hooks.
 */
export function makeModel(dir, { shards = [3 << 20], mock, extraConfig } = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: 64, num_hidden_layers: 2,
    num_attention_heads: 2, num_key_value_heads: 1, head_dim: 32, intermediate_size: 128, vocab_size: 256,
    rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
    quantization: { group_size: 64, bits: 4 }, ...extraConfig,
  };
  if (mock) config._mock = mock;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { type: 'BPE', vocab: { a: 0 }, merges: [] } }));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|im_end|>' }));
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ temperature: 0.6, top_p: 0.95, top_k: 20 }));
  fs.writeFileSync(path.join(dir, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }}{% endfor %}');
  const files = {};
  if (shards.length === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), shards[0], 'model.layers');
  } else {
    const weightMap = {};
    shards.forEach((bytes, i) => {
      const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
      writeSafetensors(path.join(dir, name), bytes, `model.layers.s${i}`);
      weightMap[`model.layers.s${i}.0.weight`] = name;
      weightMap[`model.layers.s${i}.1.weight`] = name;
    });
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  }
  for (const name of fs.readdirSync(dir)) {
    const full = path.join(dir, name);
    files[name] = { size: fs.statSync(full).size, sha256: sha256File(full) };
  }
  return files;
}

/** 8 + the header's length: where a safetensors file's tensor data starts. */
export function dataStart(file) {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(8);
  fs.readSync(fd, buf, 0, 8, 0);
  fs.closeSync(fd);
  return 8 + Number(buf.readBigUInt64LE(0));
}

export function sha256File(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** pkg-src + the mock wasm module (+ an empty but valid .wasm), as pkg-build.sh lays out pkg/. */
export function assembleMockPackage(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const src = path.join(repoRoot, 'www/pkg-src');
  for (const name of fs.readdirSync(src)) fs.copyFileSync(path.join(src, name), path.join(dir, name));
  fs.copyFileSync(path.join(here, 'mock-wasm/webqwen_wasm.js'), path.join(dir, 'webqwen_wasm.js'));
  fs.writeFileSync(path.join(dir, 'webqwen_wasm_bg.wasm'), Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  return dir;
}
