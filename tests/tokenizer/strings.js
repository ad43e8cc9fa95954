// The hard strings every vocabulary is checked on, and the long text.
// Deterministic: the same list on every machine.
'use strict';

const hand = [
  '', ' ', '  ', '   ', '\t', '\n', '\r\n', '\n\n\n', ' \t \n ', '\r', '\u000b\u000c',
  'Hello world', ' Hello world', 'Hello world ', '  Hello  world  ', 'Hello\tworld\n',
  'hello\r\nworld\r\n', 'line one\n\nline two\n', 'trailing spaces   ', '   leading spaces',
  "I'm here, you're there, it's fine, we'll see, they've gone, I'd go",
  "I'M HERE, YOU'RE THERE, IT'S FINE, WE'LL SEE, THEY'VE GONE, I'D GO", "'s 't 're 've 'm 'll 'd",
  "don't won't can't shouldn't", "O'Neil's dog's bone", "rock 'n' roll", "''''", "'",
  '0', '12', '123', '1234', '12345', '123456789012345678901234567890', '3.14159', '1,000,000',
  '2024-01-15T10:30:00Z', 'v1.2.3-rc4', '0x1F600', '١٢٣٤٥ ٦٧٨', '१२३४', '①②③', '½ ¾ ²³',
  'Café crème brûlée, naïve façade, Ångström, Øresund, Łódź, Ñandú',
  'Cafe\u0301 cre\u0300me (combining accents)', 'e\u0301\u0302\u0303\u0304 stacked', 'Zalgo: Z̷̡̢a̶l̸g̵o̴',
  'Привет, мир! Съешь же ещё этих мягких французских булок.', 'Γειά σου Κόσμε, ΑΒΓΔ αβγδ',
  'مرحبا بالعالم، كيف حالك؟', 'שלום עולם, מה שלומך?', 'नमस्ते दुनिया, आप कैसे हैं?',
  'สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง', '你好，世界！今天天气很好。', '日本語のテキスト、カタカナとひらがな。',
  '안녕하세요 세계, 한국어 텍스트입니다.', 'ጤና ይስጥልኝ ዓለም', 'Բարեւ աշխարհ', 'გამარჯობა მსოფლიო',
  'தமிழ் உலகம்', 'বাংলা ভাষা', 'ᚠᚢᚦᚨᚱᚲ runes', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙', '𐐷𐐷 deseret', '𠜎𠜱𠝹𠱓 ext-b',
  '😀', '😀😃😄', '👍🏽', '👨‍👩‍👧‍👦 family', '🏳️‍🌈 flag', '🇫🇷🇩🇪🇯🇵', '❤️‍🔥', '🧑🏿‍🚀 astronaut',
  'emoji👍in👍words', '🙂 🙃 🙂', '☃ ★ ♠ ♣ ♥ ♦', '∀x∈ℝ: x²≥0', '→ ← ↑ ↓ ⇒', '€100 £50 ¥1000 ₹500',
  '\u0000', 'a\u0000b', '\u0001\u0002\u0003\u007f', 'bell\u0007tab\tnul\u0000', '\u0085next line',
  '\u00a0nbsp\u00a0', '\u2000\u2001\u2002en quads', '\u200bzero\u200bwidth', '\u200d\u200c joiners',
  '\u2028line sep\u2029para sep', '\u3000ideographic space', '\u180emongolian', '\ufeffBOM',
  '\ufffd replacement', '\uffff nonchar', '\u{10ffff} max', '\u{e0041}\u{e0042} tags', '\u00ad soft hyphen',
  'a'.repeat(300), 'ab'.repeat(200), 'x y '.repeat(50), ' '.repeat(100), '\n'.repeat(40), 'Ä'.repeat(120),
  'supercalifragilisticexpialidocious', 'Pneumonoultramicroscopicsilicovolcanoconiosis',
  'Donaudampfschifffahrtsgesellschaftskapitänsmütze', '9'.repeat(100), '😀'.repeat(30),
  'https://example.com/path?query=1&b=2#frag', 'user@example.org', 'C:\\Windows\\System32',
  'def f(x):\n    return x ** 2  # square\n', 'for (int i = 0; i < n; ++i) { a[i] += b[i]; }',
  '{"key": [1, 2, {"nested": null}]}', '<html><body class="x">Hi</body></html>', '#!/bin/bash\necho $HOME',
  '    indented\n\tTabbed\n  \n', '...', '!!!???', '---', '___init___', '@@@', '***bold***', '~~~',
  'MiXeD CaSe WoRdS', 'ALLCAPS', 'camelCaseIdentifier', 'snake_case_identifier', 'kebab-case-id',
  'Hello <s> world', '<s>', '</s>', '<unk>', '<s><s></s>', 'a<s>b', ' <s> ', '<|endoftext|>',
  'Hi<|endoftext|>there', '<|endoftext|><|endoftext|>', '<|begin_of_text|>Hello', 'x<|eot_id|>y',
  '<|im_start|>user\nHi<|im_end|>', '<|start_header_id|>system<|end_header_id|>\n\n',
  '<think>reasoning</think>', '<|endoftext', 'endoftext|>', '<0x41>', '▁', '▁▁hello', 'Ġhello', 'âĢĻ',
  'mask: <mask> and  <mask>x', 'a [SEP]   b [SEP]', 'cat category bobcat cat_ cat. (cat)', ' <both>  x',
  'hello hello', ' hello', 'Say hello!', '<mask>long <mask>lon',
  'cat\u0301 cat', '2cat cat2 _cat cat_ écat', 'ab\u00a0 <mask>', '<mask>\u3000 x', 'x [SEP]\n\ny',
  '<both><both>', '  <both>  <mask>  ', 'cat', ' cat ', 'cat\u200dcat',
];

// Pieces mixed into more strings by a fixed generator.
const pool = [
  'the', ' quick', ' brown', ' fox', "'s", "'LL", ' 42', '123456', '\n', '\r\n', '\t', '  ', ' ',
  'é', 'ñ', 'Ж', 'λ', 'ع', 'ש', 'क्ष', 'ก', '漢字', 'ひ', '한', '😀', '👍🏻', '‍', '\u0301', '\u0000',
  '\u00a0', '<s>', '<|endoftext|>', '<|im_end|>', '!', '?', '...', '"', '(', ')', '-', '_', '.', ',',
];
function mixed(count) {
  let seed = 12345;
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const out = [];
  for (let k = 0; k < count; ++k) {
    const n = 1 + rand(12);
    let s = '';
    for (let i = 0; i < n; ++i) s += pool[rand(pool.length)];
    out.push(s);
  }
  return out;
}

const strings = hand.concat(mixed(260));

// A long mixed-script text (~350 KB of UTF-8): prose, code and numbers in many
// scripts, varied by a counter so that words repeat as in real text.
function longText(chars = 220000) {
  const paras = [
    'The committee met on Tuesday, 14 March 2023, to review the 1,250-page report. ',
    "It's not what we expected: they'd planned for 3 phases, but we'll need 12. ",
    'Le comité s’est réuni à Genève pour étudier les données météorologiques. ',
    'Комитет собрался во вторник, чтобы обсудить доклад на 1250 страницах. ',
    'Η επιτροπή συνεδρίασε την Τρίτη για να εξετάσει την έκθεση. ',
    'اجتمعت اللجنة يوم الثلاثاء لمراجعة التقرير المؤلف من 1250 صفحة. ',
    'הוועדה התכנסה ביום שלישי כדי לבחון את הדו"ח. ',
    'समिति ने मंगलवार को 1250 पृष्ठों की रिपोर्ट की समीक्षा की। ',
    'คณะกรรมการประชุมเมื่อวันอังคารเพื่อทบทวนรายงาน ',
    '委员会于星期二开会，审查了长达1250页的报告。日本の委員会も報告書を検討した。',
    '위원회는 화요일에 1250페이지 분량의 보고서를 검토했다. ',
    'Emoji 😀👍🏽 and 👨‍👩‍👧 appear too; so does naïve café crème. ',
    'def tokenize(text):\n    return [t for t in text.split() if t]\n\n',
    '\tIndented\tcolumns\t1\t2\t3\r\n',
  ];
  let out = '';
  for (let i = 0; out.length < chars; ++i) {
    out += paras[i % paras.length];
    if (i % 7 === 0) out += `Item ${i} costs $${(i * 37) % 1000}.${i % 100}\n`;
    if (i % 11 === 0) out += `word${i} `;
  }
  return out;
}

module.exports = { strings, longText };
