// Expected ids and texts for the tokenizer test, from Hugging Face's
// `tokenizers` (the npm Node binding over the Rust library).
//   node reference.js MODELS_DIR NODE_MODULES_DIR OUT_DIR
// writes OUT_DIR/expected.json and OUT_DIR/long_text.txt. Fails (exit 1)
// when the binding or a model directory is missing: scripts/setup.sh
// provides them.
'use strict';
const fs = require('fs');
const path = require('path');

const [models, nodeModules, out] = process.argv.slice(2);
if (!models || !nodeModules || !out) {
  console.error('usage: node reference.js MODELS_DIR NODE_MODULES_DIR OUT_DIR');
  process.exit(2);
}
process.env.RAYON_NUM_THREADS = '1';
process.env.TOKENIZERS_PARALLELISM = 'false';
let tk;
try {
  tk = require(path.join(nodeModules, 'tokenizers'));
} catch (e) {
  console.error(`reference.js: cannot load the tokenizers binding from ${nodeModules} ` +
    `(run scripts/setup.sh): ${e.message}`);
  process.exit(1);
}
const { strings, longText } = require('./strings.js');

const names = ['gpt2', 'gpt2-files', 'gpt2-added', 'gpt2-prefix', 'llama2', 'mistral',
  'mistral-metaspace', 'mistral-metaspace-legacy', 'llama3', 'llama3-bos', 'qwen3'];

async function load(name) {
  const dir = path.join(models, name);
  if (name === 'gpt2-files') {
    // The binding's own BPE from vocab.json + merges.txt, with GPT-2's
    // byte-level pieces, as transformers converts such a directory.
    const model = await tk.BPE.fromFile(path.join(dir, 'vocab.json'), path.join(dir, 'merges.txt'));
    const t = new tk.Tokenizer(model);
    t.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
    t.addSpecialTokens(['<|endoftext|>']);
    // The binding has no ByteLevel decoder constructor: add it through the
    // JSON the library writes.
    const tmp = path.join(out, 'gpt2-files.tokenizer.json');
    t.save(tmp);
    const j = JSON.parse(fs.readFileSync(tmp, 'utf8'));
    j.decoder = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
    fs.writeFileSync(tmp, JSON.stringify(j));
    return tk.Tokenizer.fromFile(tmp);
  }
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) {
    console.error(`reference.js: ${file} is missing (run scripts/setup.sh)`);
    process.exit(1);
  }
  return tk.Tokenizer.fromFile(file);
}

function lcg(seed) {
  return (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
}

async function main() {
  fs.mkdirSync(out, { recursive: true });
  const long = longText();
  fs.writeFileSync(path.join(out, 'long_text.txt'), long);
  const result = { strings, models: {} };
  for (const name of names) {
    const t = await load(name);
    const m = { dir: path.join(models, name), vocab_size: t.getVocabSize(true), cases: [] };
    for (const s of strings) {
      const withSpecial = Array.from((await t.encode(s, null, { addSpecialTokens: true })).getIds());
      const without = Array.from((await t.encode(s, null, { addSpecialTokens: false })).getIds());
      m.cases.push({
        ids: withSpecial,
        ids_plain: without,
        decoded: await t.decode(withSpecial, true),
        decoded_special: await t.decode(withSpecial, false),
      });
    }
    const longIds = Array.from((await t.encode(long, null, { addSpecialTokens: true })).getIds());
    m.long_ids = longIds;
    m.long_decoded = await t.decode(longIds, true);
    // Arbitrary id lists: single bytes and byte fallback tokens that split
    // characters, special tokens, ids past the vocabulary.
    const rand = lcg(names.indexOf(name) + 7);
    const size = t.getVocabSize(true);
    const byteIds = [];
    for (let b = 0; b < 256; ++b) {
      const hex = '<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>';
      const id = t.tokenToId(hex);
      if (id !== null && id !== undefined) byteIds.push(id);
    }
    if (byteIds.length === 0) {
      // Byte-level: the tokens of one byte are the first of the byte-level
      // alphabet; take those that spell bytes >= 0x80.
      for (let b = 0x80; b < 0x100; ++b) {
        const cp = b >= 0xa1 && b !== 0xad ? b : null;
        if (cp !== null) {
          const id = t.tokenToId(String.fromCodePoint(cp));
          if (id !== null && id !== undefined) byteIds.push(id);
        }
      }
      for (let cp = 0x100; cp < 0x144; ++cp) {
        const id = t.tokenToId(String.fromCodePoint(cp));
        if (id !== null && id !== undefined) byteIds.push(id);
      }
    }
    m.id_lists = [];
    for (let k = 0; k < 120; ++k) {
      const n = 1 + rand(10);
      const ids = [];
      for (let i = 0; i < n; ++i) {
        const r = rand(10);
        if (r < 5) ids.push(byteIds[rand(byteIds.length)]);
        else if (r < 8) ids.push(rand(size));
        else if (r < 9) ids.push(size - 1 - rand(Math.min(size, 30)));
        else ids.push(size + rand(5));
      }
      m.id_lists.push({ ids, decoded: await t.decode(ids, true),
        decoded_special: await t.decode(ids, false) });
    }
    m.tokens = {};
    for (const token of ['<s>', '<unk>', '<|endoftext|>', '<|begin_of_text|>', 'hello', 'Ġthe',
      '▁the', '<0x0A>', 'no-such-token-here']) {
      const id = t.tokenToId(token);
      m.tokens[token] = id === undefined ? null : id;
    }
    result.models[name] = m;
  }
  fs.writeFileSync(path.join(out, 'expected.json'), JSON.stringify(result));
  console.log(`reference.js: ${strings.length} strings x ${names.length} vocabularies -> ${out}`);
}

main().catch((e) => {
  console.error('reference.js: ' + (e.stack || e));
  process.exit(1);
});
