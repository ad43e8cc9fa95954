// Checks a running torchtp-serve from outside, with OpenAI's official
// client (npm `openai`) and raw HTTP (Node's fetch). Every wait is bounded.
//
// Usage: node client.js MODE BASE_URL NODE_MODULES [ARGS...]
//   api [chat DIR] completions (and chat, against DIR's template rendered
//                  by @huggingface/jinja), whole and streamed, through the
//                  client; usage counts; /v1/models, /health, /metrics
//   concurrent N   N clients at once: each response equals the same
//                  request served alone (greedy and seeded sampling)
//   bad            every bad request gets a 4xx in OpenAI's error shape and
//                  changes nothing; a client leaving mid-stream frees its
//                  blocks
//   key KEY        without the key 401, with it 200; the model has no
//                  chat template: chat is a 400 saying so
//   raising        the model's template raises on a system message: 400
//   queue          (a server of --max-batch 1) a streamed request whose
//                  client leaves while it waits in the queue is cancelled
//                  there, before it ever runs
//   stream OUT N   streams N tokens into OUT (for the SIGTERM and rank-death
//                  tests), writing OUT.started after the first chunk
// Prints PASS/FAIL lines; exits 1 if anything failed.
'use strict';
const fs = require('fs');
const path = require('path');

const [mode, base, modules, ...rest] = process.argv.slice(2);
const OpenAI = require(path.join(modules, 'openai'));
const client = new OpenAI({
  baseURL: base + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 120000,
});

let failed = 0;
function check(name, ok, detail = '') {
  console.log(`${ok ? 'PASS' : 'FAIL'}: ${name}${ok ? '' : ' ' + detail}`);
  if (!ok) failed++;
}

async function raw(pathname, body, headers = {}) {
  const res = await fetch(base + pathname, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined :
        typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
  return { status: res.status, text, json };
}

async function metric(name) {
  const { text } = await raw('/metrics');
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') ||
                                            l.startsWith(name + '{'));
  return line === undefined ? NaN : Number(line.split(' ').pop());
}

// Polls until the engine holds nothing (at most 10 s).
async function idle() {
  for (let i = 0; i < 100; i++) {
    if (await metric('torchtp_requests_running') === 0 &&
        await metric('torchtp_kv_blocks_used') === 0 &&
        await metric('torchtp_requests_waiting') === 0) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

const prompts = [
  'The quick brown fox', 'Once upon a time', 'Héllo, 世界! 👋🏽',
  'In 1869, the', 'def main():\n    ', 'A', 'Tensor parallelism splits',
  'The café costs 12.50€ —',
];

async function complete(request) {
  if (request.stream) {
    const stream = await client.completions.create(request);
    let text = '', finish = null, usage = null, chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    return { text, finish, usage, chunks };
  }
  const r = await client.completions.create(request);
  return { text: r.choices[0].text, finish: r.choices[0].finish_reason,
           usage: r.usage };
}

async function api() {
  const chat = rest[0] === 'chat';
  const models = await client.models.list();
  check('/v1/models lists the served model', models.data.length === 1 &&
        typeof models.data[0].id === 'string');
  const name = models.data[0].id;
  const whole = await complete({ model: name, prompt: prompts[0],
                                 max_tokens: 12, temperature: 0 });
  check('completion: 12 tokens, finish_reason length',
        whole.usage.completion_tokens === 12 && whole.finish === 'length',
        JSON.stringify(whole));
  check('completion: usage adds up', whole.usage.total_tokens ===
        whole.usage.prompt_tokens + whole.usage.completion_tokens);
  const streamed = await complete({ model: name, prompt: prompts[0],
      max_tokens: 12, temperature: 0, stream: true,
      stream_options: { include_usage: true } });
  check('streamed completion: the same text as whole',
        streamed.text === whole.text, JSON.stringify([streamed, whole]));
  check('streamed completion: usage in the last chunk',
        streamed.usage && streamed.usage.completion_tokens === 12);
  check('streamed completion: more than one chunk', streamed.chunks > 2);
  const ids = await complete({ prompt: [1, 2, 3, 4], max_tokens: 3,
                               temperature: 0 });
  check('a prompt of token ids', ids.usage.prompt_tokens === 4 &&
        ids.usage.completion_tokens === 3);
  // A stop string cuts the text before it: take one the model produces.
  const cut = whole.text.slice(4, 7);
  if (cut.trim().length > 0 && whole.text.indexOf(cut) === 4) {
    const stopped = await complete({ prompt: prompts[0], max_tokens: 12,
                                     temperature: 0, stop: [cut] });
    check('stop string: text ends before it, finish_reason stop',
          stopped.text === whole.text.slice(0, 4) && stopped.finish === 'stop',
          JSON.stringify([stopped.text, whole.text, cut]));
    const stoppedStream = await complete({ prompt: prompts[0], max_tokens: 12,
        temperature: 0, stop: cut, stream: true });
    check('stop string, streamed: the same',
          stoppedStream.text === stopped.text &&
          stoppedStream.finish === 'stop');
  } else {
    check('stop string: the model produced text to cut', false,
          JSON.stringify(whole.text));
  }
  if (chat) {
    const messages = [{ role: 'system', content: 'You are terse.' },
                      { role: 'user', content: 'Say hello, 世界.' },
                      { role: 'assistant', content: 'Hello.' },
                      { role: 'user', content: 'Again.' }];
    const r = await client.chat.completions.create({
      model: name, messages, max_tokens: 10, temperature: 0 });
    check('chat: an assistant message, 10 tokens',
          r.choices[0].message.role === 'assistant' &&
          r.usage.completion_tokens === 10 && r.object === 'chat.completion',
          JSON.stringify(r));
    // The prompt the server built: the directory's chat template rendered
    // by @huggingface/jinja, tokenized by Hugging Face's tokenizers
    // without special tokens (as transformers' apply_chat_template).
    const dir = rest[1];
    const config = JSON.parse(
        fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    const { Template } = require(path.join(modules, '@huggingface/jinja'));
    const special = {};
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const v = config[k];
      const t = typeof v === 'string' ? v : v && v.content;
      if (typeof t === 'string') special[k] = t;
    }
    const rendered = new Template(config.chat_template).render({
      messages, add_generation_prompt: true, ...special });
    const tk = require(path.join(modules, 'tokenizers'));
    const tokenizer = tk.Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    const ids = (await tokenizer.encode(rendered, null,
                                        { addSpecialTokens: false })).getIds();
    check('chat: the prompt is the template rendered by @huggingface/jinja ' +
          `(${ids.length} tokens)`, r.usage.prompt_tokens === ids.length,
          `server ${r.usage.prompt_tokens}, reference ${ids.length}`);

    const s = await client.chat.completions.create({
      model: name, messages, max_tokens: 10, temperature: 0, stream: true });
    let text = '', role = null, finish = null;
    for await (const chunk of s) {
      const d = chunk.choices[0];
      if (d.delta.role) role = d.delta.role;
      if (d.delta.content) text += d.delta.content;
      if (d.finish_reason) finish = d.finish_reason;
    }
    check('chat streamed: the same message', role === 'assistant' &&
          text === r.choices[0].message.content && finish === 'length');
  }
  const health = await raw('/health');
  check('/health: 200', health.status === 200);
  const m = await raw('/metrics');
  check('/metrics: Prometheus text with the engine and latencies',
        /torchtp_kv_blocks_total \d+/.test(m.text) &&
        /torchtp_time_to_first_token_seconds_count [1-9]/.test(m.text) &&
        /torchtp_inter_token_latency_seconds_bucket/.test(m.text) &&
        /torchtp_generation_tokens_total [1-9]/.test(m.text), m.text);
  check('the engine is idle afterwards', await idle());
}

async function concurrent() {
  const n = Number(rest[0]);
  const requests = [];
  for (let i = 0; i < n; i++) {
    const sampled = i % 4 === 3;
    requests.push({
      prompt: prompts[i % prompts.length] + ' ' + i,
      max_tokens: 4 + (i * 7) % 21,
      temperature: sampled ? 0.9 : 0,
      ...(sampled ? { seed: 1000 + i, top_p: 0.9 } : {}),
      stream: i % 2 === 1,
    });
  }
  const alone = [];
  for (const r of requests) alone.push(await complete(r));
  const started = Date.now();
  const together = await Promise.all(requests.map(complete));
  const seconds = (Date.now() - started) / 1000;
  let same = 0;
  for (let i = 0; i < n; i++) {
    const a = alone[i], t = together[i];
    const ok = a.text === t.text && a.finish === t.finish &&
        (t.usage === null || a.usage === null ||
         a.usage.completion_tokens === t.usage.completion_tokens);
    if (ok) same++;
    else console.log(`request ${i}: alone ${JSON.stringify(a)} together ` +
                     JSON.stringify(t));
  }
  check(`${n} concurrent requests each equal the request alone ` +
        `(${same}/${n}; ${seconds.toFixed(1)} s together)`, same === n);
  check('every request got its tokens',
        together.every((t, i) => t.finish === 'length' || t.finish === 'stop'));
  check('the engine is idle afterwards', await idle());
}

async function bad() {
  const expect4xx = async (name, status, body, param, headers) => {
    const r = await raw('/v1/completions', body, headers);
    const e = r.json && r.json.error;
    check(`${name}: ${status} with OpenAI's error JSON`,
          r.status === status && e && typeof e.message === 'string' &&
          typeof e.type === 'string' && (param === undefined ||
                                         e.param === param),
          `${r.status} ${r.text.slice(0, 300)}`);
  };
  const before = await metric('torchtp_generation_tokens_total');
  await expect4xx('malformed JSON', 400, '{"prompt": "a", ');
  await expect4xx('not an object', 400, '[1, 2]');
  await expect4xx('max_tokens of the wrong type', 400,
                  { prompt: 'a', max_tokens: 'ten' }, 'max_tokens');
  await expect4xx('temperature of the wrong type', 400,
                  { prompt: 'a', temperature: 'hot' }, 'temperature');
  await expect4xx('stream of the wrong type', 400,
                  { prompt: 'a', stream: 'yes' }, 'stream');
  await expect4xx('stop of the wrong type', 400, { prompt: 'a', stop: 5 },
                  'stop');
  await expect4xx('prompt of the wrong type', 400, { prompt: { a: 1 } },
                  'prompt');
  await expect4xx('no prompt', 400, { max_tokens: 3 }, 'prompt');
  await expect4xx('an empty prompt', 400, { prompt: '' }, 'prompt');
  await expect4xx('a token id outside the vocabulary', 400,
                  { prompt: [1, 1e9] }, 'prompt');
  await expect4xx('max_tokens beyond the context', 400,
                  { prompt: 'a', max_tokens: 1000000 }, 'max_tokens');
  await expect4xx('n = 2', 400, { prompt: 'a', n: 2 }, 'n');
  await expect4xx('temperature out of range', 400,
                  { prompt: 'a', temperature: 5 }, 'temperature');
  await expect4xx('another model', 404, { model: 'gpt-4', prompt: 'a' },
                  'model');
  const chat = await raw('/v1/chat/completions', { messages: 'hi' });
  check('chat: messages of the wrong type: 400', chat.status === 400 &&
        chat.json.error.param === 'messages', chat.text);
  const missing = await raw('/v1/nothing', {});
  check('an unknown endpoint: 404 with OpenAI\'s error JSON',
        missing.status === 404 && missing.json && missing.json.error);
  // 100 MB: refused from its length (the server may close the connection
  // before reading it all, so a reset counts as refused too).
  let big = null;
  try {
    big = await raw('/v1/completions',
                    JSON.stringify({ prompt: 'x'.repeat(100 << 20) }));
  } catch (e) {
    big = { status: 'reset', text: String(e) };
  }
  check('a 100 MB body: 413 (or the connection closed)',
        big.status === 413 || big.status === 'reset',
        `${big.status} ${big.text.slice(0, 200)}`);
  check('no bad request generated anything',
        await metric('torchtp_generation_tokens_total') === before);
  const ok = await complete({ prompt: 'After the bad ones', max_tokens: 5,
                              temperature: 0 });
  check('the server still serves', ok.usage.completion_tokens === 5);

  // A client that leaves mid-stream: its request is cancelled and its
  // blocks freed.
  const cancelledBefore =
      await metric('torchtp_requests_finished_total{reason="cancelled"}') || 0;
  const room = await contextRoom('Leaving early');
  const controller = new AbortController();
  const res = await fetch(base + '/v1/completions', {
    method: 'POST', signal: controller.signal,
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Leaving early', max_tokens: room,
                           stream: true, temperature: 0 }),
  });
  const reader = res.body.getReader();
  for (let got = 0; got < 3;) {
    const { value, done } = await reader.read();
    if (done) break;
    got += (new TextDecoder().decode(value).match(/data: /g) || []).length;
  }
  controller.abort();
  check('a client leaving mid-stream frees its blocks', await idle());
  const cancelledAfter =
      await metric('torchtp_requests_finished_total{reason="cancelled"}');
  check('... and its request counts as cancelled',
        cancelledAfter === cancelledBefore + 1,
        `${cancelledBefore} -> ${cancelledAfter}`);
}

// The most tokens a completion of `prompt` may ask for.
async function contextRoom(prompt) {
  const models = await raw('/v1/models');
  const context = models.json.data[0].max_model_len;
  const r = await complete({ prompt, max_tokens: 1, temperature: 0 });
  return context - r.usage.prompt_tokens;
}

async function key() {
  const wanted = rest[0];
  const none = await raw('/v1/models');
  check('no API key: 401', none.status === 401 &&
        none.json.error.type === 'authentication_error', none.text);
  const wrong = await raw('/v1/models', undefined,
                          { Authorization: 'Bearer nope' });
  check('a wrong API key: 401', wrong.status === 401);
  const keyed = new OpenAI({ baseURL: base + '/v1', apiKey: wanted,
                             maxRetries: 0 });
  const r = await keyed.completions.create({ prompt: 'a', max_tokens: 2 });
  check('the right API key: served', r.usage.completion_tokens === 2);
  // This server's model has no chat template.
  const chat = await raw('/v1/chat/completions',
                         { messages: [{ role: 'user', content: 'hi' }] },
                         { Authorization: 'Bearer ' + wanted });
  check('chat without a chat_template: 400 saying so', chat.status === 400 &&
        /chat_template/.test(chat.json.error.message), chat.text);
}

// The model's template raises on a system message.
async function raising() {
  const ok = await raw('/v1/chat/completions',
                       { messages: [{ role: 'user', content: 'hi' }],
                         max_tokens: 2 });
  check('a template that renders: served', ok.status === 200, ok.text);
  const r = await raw('/v1/chat/completions',
                      { messages: [{ role: 'system', content: 'x' },
                                   { role: 'user', content: 'hi' }] });
  check('what the template raises: 400 with its message',
        r.status === 400 && /no system messages here/.test(r.json.error.message),
        r.text);
}

async function queue() {
  const cancelled = 'torchtp_requests_finished_total{reason="cancelled"}';
  const cancelledBefore = await metric(cancelled) || 0;
  const start = (max_tokens, signal) => fetch(base + '/v1/completions', {
    method: 'POST', signal, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Hold the line', max_tokens, stream: true,
                           temperature: 0 }),
  });
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const first = new AbortController();
  const reader = (await start(1500, first.signal)).body.getReader();
  await reader.read(); // it runs
  const promptTokens = await metric('torchtp_prompt_tokens_total');
  const second = new AbortController();
  start(5, second.signal).catch(() => null);
  let waits = false;
  for (let i = 0; i < 100 && !waits; i++) {
    waits = await metric('torchtp_requests_waiting') === 1;
    if (!waits) await sleep(50);
  }
  check('a second request waits behind the first', waits);
  second.abort();
  let gone = false;
  for (let i = 0; i < 100 && !gone; i++) { // at most 10 s
    gone = await metric('torchtp_requests_waiting') === 0 &&
           await metric(cancelled) === cancelledBefore + 1;
    if (!gone) await sleep(100);
  }
  const ran = await metric('torchtp_prompt_tokens_total') - promptTokens;
  const firstRuns = await metric('torchtp_requests_running') === 1;
  check('its client leaving cancels it while it waits (never prefilled)',
        gone && ran === 0 && firstRuns,
        `cancelled: ${gone}, prompt tokens run since: ${ran}, ` +
        `first still running: ${firstRuns}`);
  first.abort();
  check('... and the first frees its blocks when its client leaves too',
        await idle());
}

async function stream() {
  const [out, n] = rest;
  const fd = fs.openSync(out, 'w');
  try {
    const s = await client.completions.create({
      prompt: 'A long story', max_tokens: Number(n), temperature: 0,
      stream: true });
    for await (const chunk of s) {
      fs.writeSync(fd, JSON.stringify(chunk) + '\n');
      if (!fs.existsSync(out + '.started')) fs.writeFileSync(out + '.started', '');
    }
    fs.writeSync(fd, 'END\n');
  } catch (e) {
    fs.writeSync(fd, 'ERROR ' + e.message + '\n');
  }
  fs.closeSync(fd);
}

const modes = { api, concurrent, bad, key, raising, queue, stream };
modes[mode]().then(() => process.exit(failed ? 1 : 0), (e) => {
  console.log('FAIL: ' + mode + ' threw ' + (e.stack || e));
  process.exit(1);
});
