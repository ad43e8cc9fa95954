#include "chat/lexer.h"

#include "chat/js_text.h"

#include <c10/util/Exception.h>

#include <array>
#include <cctype>
#include <utility>

namespace torchtp::chat {

namespace {

// Text with the source line of every byte, so that errors name the line
// of the template as written, before preprocessing removed anything.
struct LinedText {
  std::string text;
  std::vector<int> lines;

  void push(char c, int line) {
    text += c;
    lines.push_back(line);
  }
  void append(const LinedText& from, size_t begin, size_t end) {
    text.append(from.text, begin, end - begin);
    lines.insert(
        lines.end(), from.lines.begin() + begin, from.lines.begin() + end);
  }
};

bool at_line_start(const std::string& s, size_t i) {
  if (i == 0 || s[i - 1] == '\n' || s[i - 1] == '\r') {
    return true;
  }
  // U+2028 and U+2029 end lines for JavaScript's multiline `^` too.
  return i >= 3 && s.compare(i - 3, 2, "\xE2\x80") == 0 &&
         (s[i - 1] == '\xA8' || s[i - 1] == '\xA9');
}

// lstrip_blocks as Hugging Face applies it: /^[ \t]*({[#%-])/gm -> "$1".
LinedText lstrip_blocks(const LinedText& in) {
  LinedText out;
  const std::string& s = in.text;
  for (size_t i = 0; i < s.size();) {
    if (at_line_start(s, i)) {
      size_t j = i;
      while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) {
        ++j;
      }
      if (j + 1 < s.size() && s[j] == '{' &&
          (s[j + 1] == '#' || s[j + 1] == '%' || s[j + 1] == '-')) {
        out.append(in, j, j + 2);
        i = j + 2;
        continue;
      }
    }
    out.push(s[i], in.lines[i]);
    ++i;
  }
  return out;
}

// trim_blocks as Hugging Face applies it: /([#%-]})\n/g -> "$1".
LinedText trim_blocks(const LinedText& in) {
  LinedText out;
  const std::string& s = in.text;
  for (size_t i = 0; i < s.size();) {
    if (i + 2 < s.size() && (s[i] == '#' || s[i] == '%' || s[i] == '-') &&
        s[i + 1] == '}' && s[i + 2] == '\n') {
      out.append(in, i, i + 2);
      i += 3;
      continue;
    }
    out.push(s[i], in.lines[i]);
    ++i;
  }
  return out;
}

size_t skip_js_spaces(const std::string& s, size_t i) {
  while (size_t n = js_space_at(s, i)) {
    i += n;
  }
  return i;
}

// The end of a `{%-? (end)?generation -?%}` tag starting at `i`, or npos;
// `lstrip` / `rstrip` say whether it carries the dashes.
size_t generation_tag_end(
    const std::string& s, size_t i, bool& lstrip, bool& rstrip) {
  if (s.compare(i, 2, "{%") != 0) {
    return std::string::npos;
  }
  size_t j = i + 2;
  lstrip = j < s.size() && s[j] == '-';
  j = skip_js_spaces(s, j + (lstrip ? 1 : 0));
  if (s.compare(j, 3, "end") == 0 && s.compare(j + 3, 10, "generation") == 0) {
    j += 3;
  }
  if (s.compare(j, 10, "generation") != 0) {
    return std::string::npos;
  }
  j = skip_js_spaces(s, j + 10);
  rstrip = j < s.size() && s[j] == '-';
  j += rstrip ? 1 : 0;
  if (s.compare(j, 2, "%}") != 0) {
    return std::string::npos;
  }
  return j + 2;
}

// transformers' `{% generation %}` / `{% endgeneration %}` marks the
// assistant's tokens for training masks; rendering drops the tags (and the
// whitespace around them where a dash asks), as Hugging Face does.
LinedText drop_generation_tags(const LinedText& in) {
  LinedText out;
  const std::string& s = in.text;
  size_t copied = 0; // s[0, copied) is in `out` already
  size_t i = 0;
  while (i < s.size()) {
    bool lstrip = false, rstrip = false;
    const size_t end = generation_tag_end(s, i, lstrip, rstrip);
    if (end == std::string::npos) {
      i += std::max<size_t>(1, js_space_at(s, i));
      continue;
    }
    // The whitespace just before the tag (not before `copied`).
    size_t before = copied;
    for (size_t k = copied; k < i;) {
      const size_t n = js_space_at(s, k);
      if (n == 0) {
        ++k;
        before = k;
      } else {
        k += n;
      }
    }
    const size_t after = skip_js_spaces(s, end);
    out.append(in, copied, before);
    if (!lstrip) {
      out.append(in, before, i);
    }
    if (!rstrip) {
      out.append(in, end, after);
    }
    copied = i = after;
  }
  out.append(in, copied, s.size());
  return out;
}

LinedText preprocess(const std::string& source) {
  LinedText text;
  int line = 1;
  for (char c : source) {
    text.push(c, line);
    line += c == '\n' ? 1 : 0;
  }
  if (!text.text.empty() && text.text.back() == '\n') {
    text.text.pop_back();
    text.lines.pop_back();
  }
  return drop_generation_tags(trim_blocks(lstrip_blocks(text)));
}

bool is_word(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

const std::array<std::pair<const char*, TokenType>, 29> kSymbols = {{
    {"{%", TokenType::kOpenStatement},  {"%}", TokenType::kCloseStatement},
    {"{{", TokenType::kOpenExpression}, {"}}", TokenType::kCloseExpression},
    {"(", TokenType::kOpenParen},       {")", TokenType::kCloseParen},
    {"{", TokenType::kOpenCurly},       {"}", TokenType::kCloseCurly},
    {"[", TokenType::kOpenSquare},      {"]", TokenType::kCloseSquare},
    {",", TokenType::kComma},           {".", TokenType::kDot},
    {":", TokenType::kColon},           {"|", TokenType::kPipe},
    {"<=", TokenType::kComparison},     {">=", TokenType::kComparison},
    {"==", TokenType::kComparison},     {"!=", TokenType::kComparison},
    {"<", TokenType::kComparison},      {">", TokenType::kComparison},
    {"+", TokenType::kAdditive},        {"-", TokenType::kAdditive},
    {"~", TokenType::kAdditive},        {"**", TokenType::kPower},
    {"*", TokenType::kMultiplicative},  {"//", TokenType::kMultiplicative},
    {"/", TokenType::kMultiplicative},  {"%", TokenType::kMultiplicative},
    {"=", TokenType::kEquals},
}};

class Lexer {
 public:
  explicit Lexer(const std::string& source) : in_(preprocess(source)) {}

  std::vector<Token> run();

 private:
  const std::string& s() const {
    return in_.text;
  }
  int line_at(size_t i) const {
    if (in_.lines.empty()) {
      return 1;
    }
    return in_.lines[std::min(i, in_.lines.size() - 1)];
  }
  bool starts(const char* text) const {
    return s().compare(pos_, std::char_traits<char>::length(text), text) == 0;
  }
  void push(TokenType type, std::string value, size_t at) {
    tokens_.push_back({type, std::move(value), line_at(at)});
  }
  [[noreturn]] void fail(size_t at, const std::string& what) const {
    TORCH_CHECK(false, "torchtp::ChatTemplate: line ", line_at(at), ": ", what);
  }
  void strip_trailing_whitespace() {
    if (!tokens_.empty() && tokens_.back().type == TokenType::kText) {
      tokens_.back().value = js_trim_end(tokens_.back().value);
      if (tokens_.back().value.empty()) {
        tokens_.pop_back();
      }
    }
  }
  void skip_whitespace() {
    pos_ = skip_js_spaces(s(), pos_);
  }
  std::string read_string(char quote);
  std::string read_digits() {
    const size_t start = pos_;
    while (pos_ < s().size() && is_digit(s()[pos_])) {
      ++pos_;
    }
    return s().substr(start, pos_ - start);
  }
  void read_number(const std::string& sign, size_t at);

  void curly_depth_reset() {
    curly_depth_ = 0;
  }

  LinedText in_;
  size_t pos_ = 0;
  // Inside an object literal `}}` closes two literals, not the expression.
  int curly_depth_ = 0;
  std::vector<Token> tokens_;
};

std::string Lexer::read_string(char quote) {
  const size_t start = pos_;
  ++pos_;
  std::string out;
  while (true) {
    if (pos_ >= s().size()) {
      fail(start, "unterminated string literal");
    }
    const char c = s()[pos_];
    if (c == quote) {
      ++pos_;
      return out;
    }
    if (c != '\\') {
      out += c;
      ++pos_;
      continue;
    }
    if (++pos_ >= s().size()) {
      fail(start, "unterminated string literal");
    }
    const char e = s()[pos_++];
    switch (e) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'v':
        out += '\v';
        break;
      case '\'':
      case '"':
      case '\\':
        out += e;
        break;
      case 'x':
      case 'u': {
        const size_t n = e == 'x' ? 2 : 4;
        const std::string hex = s().substr(pos_, n);
        if (hex.size() != n ||
            hex.find_first_not_of("0123456789abcdefABCDEF") !=
                std::string::npos) {
          fail(pos_, "invalid escape \\" + std::string(1, e) + hex);
        }
        pos_ += n;
        char32_t unit = std::stoul(hex, nullptr, 16);
        // A surrogate pair written as two \u escapes is one code point.
        if (unit >= 0xD800 && unit < 0xDC00 &&
            s().compare(pos_, 2, "\\u") == 0) {
          const std::string low = s().substr(pos_ + 2, 4);
          if (low.size() == 4 &&
              low.find_first_not_of("0123456789abcdefABCDEF") ==
                  std::string::npos) {
            const char32_t l = std::stoul(low, nullptr, 16);
            if (l >= 0xDC00 && l < 0xE000) {
              unit = 0x10000 + ((unit - 0xD800) << 10) + (l - 0xDC00);
              pos_ += 6;
            }
          }
        }
        append_utf8(out, unit);
        break;
      }
      default:
        fail(
            pos_ - 1,
            "unknown escape \\" + std::string(1, e) + " in a string literal");
    }
  }
}

void Lexer::read_number(const std::string& sign, size_t at) {
  std::string num = read_digits();
  // `x.0.1` is two member accesses, not a float: after a dot, digits stay
  // an integer (a signed literal is never after a dot).
  const bool after_dot =
      !tokens_.empty() && tokens_.back().type == TokenType::kDot;
  const bool fraction = !num.empty() && pos_ + 1 < s().size() &&
                        s()[pos_] == '.' && is_digit(s()[pos_ + 1]);
  if (fraction && (!sign.empty() || !after_dot)) {
    ++pos_;
    num += "." + read_digits();
  }
  if (num.empty()) {
    push(TokenType::kUnary, sign, at);
  } else {
    push(TokenType::kNumber, sign + num, at);
  }
}

std::vector<Token> Lexer::run() {
  while (pos_ < s().size()) {
    const TokenType last =
        tokens_.empty() ? TokenType::kText : tokens_.back().type;
    if (tokens_.empty() || last == TokenType::kCloseStatement ||
        last == TokenType::kCloseExpression || last == TokenType::kComment) {
      const size_t start = pos_;
      while (pos_ < s().size() &&
             !(s()[pos_] == '{' && pos_ + 1 < s().size() &&
               (s()[pos_ + 1] == '%' || s()[pos_ + 1] == '{' ||
                s()[pos_ + 1] == '#'))) {
        ++pos_;
      }
      if (pos_ > start) {
        push(TokenType::kText, s().substr(start, pos_ - start), start);
        continue;
      }
    }
    if (starts("{#")) {
      const size_t start = pos_;
      pos_ += 2;
      const bool strip_before = pos_ < s().size() && s()[pos_] == '-';
      pos_ += strip_before ? 1 : 0;
      const size_t end = s().find("#}", pos_);
      if (end == std::string::npos) {
        fail(start, "unterminated comment {# ... #}");
      }
      std::string comment = s().substr(pos_, end - pos_);
      const bool strip_after = !comment.empty() && comment.back() == '-';
      if (strip_before) {
        strip_trailing_whitespace();
      }
      push(TokenType::kComment, comment, start);
      pos_ = end + 2;
      if (strip_after) {
        skip_whitespace();
      }
      continue;
    }
    if (starts("{%-")) {
      strip_trailing_whitespace();
      push(TokenType::kOpenStatement, "{%", pos_);
      pos_ += 3;
      continue;
    }
    if (starts("{{-")) {
      strip_trailing_whitespace();
      push(TokenType::kOpenExpression, "{{", pos_);
      curly_depth_reset();
      pos_ += 3;
      continue;
    }
    skip_whitespace();
    if (pos_ >= s().size()) {
      break;
    }
    if (starts("-%}")) {
      push(TokenType::kCloseStatement, "%}", pos_);
      pos_ += 3;
      skip_whitespace();
      continue;
    }
    if (starts("-}}")) {
      push(TokenType::kCloseExpression, "}}", pos_);
      pos_ += 3;
      skip_whitespace();
      continue;
    }
    const size_t at = pos_;
    const char c = s()[pos_];
    if (c == '-' || c == '+') {
      if (tokens_.empty() || last == TokenType::kText) {
        fail(at, std::string("unexpected character '") + c + "'");
      }
      const bool binary =
          last == TokenType::kIdentifier || last == TokenType::kNumber ||
          last == TokenType::kString || last == TokenType::kCloseParen ||
          last == TokenType::kCloseSquare;
      if (!binary) {
        ++pos_;
        read_number(std::string(1, c), at);
        continue;
      }
    }
    bool matched = false;
    for (const auto& [seq, type] : kSymbols) {
      if (type == TokenType::kCloseExpression && curly_depth_ > 0) {
        continue;
      }
      if (starts(seq)) {
        push(type, seq, at);
        if (type == TokenType::kOpenExpression) {
          curly_depth_reset();
        } else if (type == TokenType::kOpenCurly) {
          ++curly_depth_;
        } else if (type == TokenType::kCloseCurly) {
          --curly_depth_;
        }
        pos_ += std::char_traits<char>::length(seq);
        matched = true;
        break;
      }
    }
    if (matched) {
      continue;
    }
    if (c == '\'' || c == '"') {
      push(TokenType::kString, read_string(c), at);
      continue;
    }
    if (is_digit(c)) {
      read_number("", at);
      continue;
    }
    if (is_word(c)) {
      const size_t start = pos_;
      while (pos_ < s().size() && is_word(s()[pos_])) {
        ++pos_;
      }
      push(TokenType::kIdentifier, s().substr(start, pos_ - start), at);
      continue;
    }
    size_t end = pos_;
    decode_utf8(s(), end);
    fail(at, "unexpected character '" + s().substr(pos_, end - pos_) + "'");
  }
  return std::move(tokens_);
}

} // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(source).run();
}

const char* token_type_name(TokenType type) {
  switch (type) {
    case TokenType::kText:
      return "text";
    case TokenType::kNumber:
      return "number";
    case TokenType::kString:
      return "string";
    case TokenType::kIdentifier:
      return "identifier";
    case TokenType::kEquals:
      return "'='";
    case TokenType::kOpenParen:
      return "'('";
    case TokenType::kCloseParen:
      return "')'";
    case TokenType::kOpenStatement:
      return "'{%'";
    case TokenType::kCloseStatement:
      return "'%}'";
    case TokenType::kOpenExpression:
      return "'{{'";
    case TokenType::kCloseExpression:
      return "'}}'";
    case TokenType::kOpenSquare:
      return "'['";
    case TokenType::kCloseSquare:
      return "']'";
    case TokenType::kOpenCurly:
      return "'{'";
    case TokenType::kCloseCurly:
      return "'}'";
    case TokenType::kComma:
      return "','";
    case TokenType::kDot:
      return "'.'";
    case TokenType::kColon:
      return "':'";
    case TokenType::kPipe:
      return "'|'";
    case TokenType::kAdditive:
      return "an additive operator";
    case TokenType::kMultiplicative:
      return "a multiplicative operator";
    case TokenType::kPower:
      return "'**'";
    case TokenType::kComparison:
      return "a comparison";
    case TokenType::kUnary:
      return "a sign";
    case TokenType::kComment:
      return "a comment";
  }
  return "?";
}

} // namespace torchtp::chat
