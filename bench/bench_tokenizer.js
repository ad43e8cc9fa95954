// Hugging Face's `tokenizers` (the npm Node binding over the Rust library)
// side of bench_tokenizer:
//   node bench_tokenizer.js text PATH CHARS   writes the benchmark's text
//   node bench_tokenizer.js encode NODE_MODULES TOKENIZER_JSON TEXT REPEATS
//        prints {"seconds": [...], "ids": n, "checksum": c} after a warm-up
// Run with RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false: one thread.
'use strict';
const fs = require('fs');
const path = require('path');

const [mode, ...args] = process.argv.slice(2);
if (mode === 'text') {
  const { longText } = require(path.join(__dirname, '..', 'tests', 'tokenizer', 'strings.js'));
  fs.writeFileSync(args[0], longText(Number(args[1])));
} else if (mode === 'encode') {
  const [nodeModules, file, textPath, repeats] = args;
  const tk = require(path.join(nodeModules, 'tokenizers'));
  const t = tk.Tokenizer.fromFile(file);
  const text = fs.readFileSync(textPath, 'utf8');
  (async () => {
    let ids = (await t.encode(text)).getIds(); // warm-up: the word cache fills
    const seconds = [];
    for (let r = 0; r < Number(repeats); ++r) {
      const t0 = process.hrtime.bigint();
      ids = (await t.encode(text)).getIds();
      seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    // The same checksum as bench_tokenizer.cpp: sum of id * (position + 1).
    let checksum = 0n;
    ids.forEach((id, i) => { checksum = (checksum + BigInt(id) * BigInt(i + 1)) % 1000000007n; });
    console.log(JSON.stringify({ seconds, ids: ids.length, checksum: Number(checksum) }));
  })().catch((e) => { console.error(e); process.exit(1); });
} else {
  console.error('usage: bench_tokenizer.js text PATH CHARS | encode NODE_MODULES TOKENIZER_JSON TEXT REPEATS');
  process.exit(2);
}
