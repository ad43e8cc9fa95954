// Random small templates for the chat-template test: expressions over a
// fixed set of variables, combined by the operators, filters, tests,
// methods and statements the engine supports, each rendered by the
// reference. Seeded, so every run draws the same templates. Constructs
// where the engine deliberately follows Python's Jinja instead (see
// docs/chat.md) are not drawn.
'use strict';

const variables = {
  s: 'Hello World',
  t: '  padded\n',
  e: '',
  n: 3,
  m: -7,
  f: 2.5,
  z: 0,
  b: true,
  c: false,
  xs: [3, 1, 2],
  ws: ['b', 'A', 'c'],
  d: { k: 'v', n: 2, a: [1] },
  ms: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'yo' }],
  nil: null,
  u: 'Ünïcödé 🙂 ß\u2028x\u00a0',
  g: 0.1,
  big: 1e21,
  tiny: 1e-7,
};

// mulberry32: 32-bit integer arithmetic, exact in JavaScript.
function rng(seed) {
  let a = seed >>> 0;
  return (k) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) % k);
  };
}

function generate(count, seed) {
  const r = rng(seed);
  const pick = (xs) => xs[r(xs.length)];
  const names = [...Object.keys(variables), 'undef'];
  const literals = ["'lit'", '"a b"', "''", '0', '1', '-2', '1.5', 'true', 'false', 'none',
    '[1, 2]', "['x', 'y']", '[]', "{'k': 1}", '{}', '0.5', "'é\\u00e9\\n'", 'range(3)',
    'namespace(a=1).a', '[none, 1.0, [2]]'];
  // No `**`: V8's pow and the C library's differ in the last digit for
  // fractional results (the engine cases keep integer powers).
  const binary = ['+', '-', '*', '/', '//', '%', '~', '==', '!=', '<', '>', '<=', '>=',
    'and', 'or', 'in', 'not in'];
  const filters = ['trim', 'length', 'upper', 'lower', 'title', 'capitalize', 'first', 'last',
    'reverse', 'sort', 'join', "join(', ')", 'unique', 'tojson', 'tojson(indent=2)', 'string',
    'int', 'float', 'abs', 'items', "default('dflt')", "default('dflt', true)", 'indent',
    "replace('l', 'L')", 'length', 'safe', "map(attribute='role')",
    "selectattr('role', 'equalto', 'user')", "rejectattr('role', 'equalto', 'user')",
    'dictsort', "sort(reverse=true)", 'tojson(ensure_ascii=true)', "indent(2, true)",
    "tojson(separators=(',', ':'))", 'int(5)', "join('-')", 'keys', 'values'];
  const tests = ['defined', 'undefined', 'none', 'string', 'number', 'integer', 'mapping',
    'iterable', 'sequence', 'boolean', 'true', 'false', 'odd', 'even', 'lower', 'upper'];
  const methods = ['.upper()', '.lower()', '.strip()', '.title()', ".split(' ')", '.split()',
    ".startswith('H')", ".endswith('d')", ".replace('o', '0')", ".get('k')",
    ".get('missing', 'dflt')", '.items()', '.keys()', '.values()', '.length', '[0]', '[-1]',
    '[1:]', '[::-1]', '[:2]', "['k']", '.k', '.role', '.capitalize()', ".split('l', 1)",
    '.lstrip()', '.rstrip()', "[1:-1]", '[-2:]'];
  function expr(depth) {
    const k = depth <= 0 ? r(2) : r(9);
    switch (k) {
      case 0: return pick(names);
      case 1: return pick(literals);
      case 2: return `${expr(depth - 1)} ${pick(binary)} ${expr(depth - 1)}`;
      case 3: return `(${expr(depth - 1)}) | ${pick(filters)}`;
      case 4: return `${pick(names)} is ${r(2) ? 'not ' : ''}${pick(tests)}`;
      case 5: return `${pick(names)}${pick(methods)}`;
      case 6: return `not ${expr(depth - 1)}`;
      case 7: return `(${expr(depth - 1)} if ${expr(depth - 1)} else ${expr(depth - 1)})`;
      default: return `(${expr(depth - 1)})`;
    }
  }
  const out = [];
  for (let i = 0; i < count; ++i) {
    const e = expr(2);
    let template;
    switch (r(4)) {
      case 0: template = `{{ ${e} }}`; break;
      case 1: template = `{% if ${e} %}yes{% else %}no{% endif %}`; break;
      case 2: template = `{% for x in ${e} %}[{{ x }}|{{ loop.index }}]{% else %}empty{% endfor %}`; break;
      default: template = `{% set v = ${e} %}<{{ v }}>`; break;
    }
    out.push(template);
  }
  return out;
}

// Whole templates: text with newlines and indentation around nested
// statements, each tag with or without its whitespace dashes; what trim_blocks,
// lstrip_blocks and the dashes act on.
function generateBlocks(count, seed) {
  const r = rng(seed);
  const pick = (xs) => xs[r(xs.length)];
  const texts = ['\n', '  ', 'a', ' \n ', '\t', 'x\n  ', '\n\n', ' b ', '\n    ', 'é\u00a0'];
  const conditions = ['b', 'c', 'n > 2', 'x == 2', 'loop.first', 'not e', "'k' in d", 's is string',
    'ns.k > 1', 'xs | length > 2'];
  const outputs = ['x', 'n', 's', 'loop.index', 'ns.k', "m.role ~ ':'", 'f', 'v', "x ~ ','"];
  const open = () => pick(['{%', '{%', '{%-']);
  const close = () => pick(['%}', '%}', '-%}']);
  const eopen = () => pick(['{{', '{{', '{{-']);
  const eclose = () => pick(['}}', '}}', '-}}']);
  const pad = () => pick(['', '', '\n', '  ', '\n  ']);
  function block(depth) {
    let out = '';
    const items = 1 + r(3);
    for (let i = 0; i < items; ++i) {
      const k = depth <= 0 ? r(3) : r(9);
      switch (k) {
        case 0: out += pick(texts); break;
        case 1: out += `${eopen()} ${pick(outputs)} ${eclose()}`; break;
        case 2: out += `${pad()}{#${pick(['', '-'])} note ${pick(['', '-'])}#}${pad()}`; break;
        case 3:
        case 4:
          out += `${pad()}${open()} if ${pick(conditions)} ${close()}${block(depth - 1)}`;
          if (r(2)) out += `${pad()}${open()} else ${close()}${block(depth - 1)}`;
          out += `${pad()}${open()} endif ${close()}${pad()}`;
          break;
        case 5:
        case 6:
          out += `${pad()}${open()} for x in ${pick(['xs', 'ws', '[1, 2, 3]', 'range(n)', 'd'])} ${close()}` +
            `${block(depth - 1)}${r(3) ? '' : `${open()} if loop.index == 2 ${close()}${open()} ${pick(['break', 'continue'])} ${close()}${open()} endif ${close()}`}` +
            `${pad()}${open()} endfor ${close()}${pad()}`;
          break;
        case 7:
          out += `${pad()}${open()} set ns.k = ns.k + 1 ${close()}${pad()}${open()} set v = ${pick(outputs)} ${close()}`;
          break;
        default:
          out += `${pad()}${open()} for m in ms ${close()}${block(depth - 1)}${open()} endfor ${close()}`;
      }
    }
    return out;
  }
  const out = [];
  for (let i = 0; i < count; ++i) {
    out.push(`{% set ns = namespace(k=0) %}{% set x = 2 %}{% set m = ms[0] %}${block(3)}${pick(['', '\n', '\n\n'])}`);
  }
  return out;
}

module.exports = { variables, generate, generateBlocks };
