// UTF-8, GPT-2's byte-to-unicode table, PCRE2 regular expressions and ICU
// normalization: the Unicode the tokenizer pipeline needs.

#include "tokenizer/tokenizer_impl.h"

#include <c10/util/Exception.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

namespace torchtp::detail {

namespace {

// The length of the well-formed UTF-8 prefix of s[i..] as a character
// (Unicode's table 3-7), or 0 when the sequence is ill-formed; `consumed`
// gets the length of the maximal subpart when ill-formed.
size_t utf8_char_at(std::string_view s, size_t i, size_t& consumed) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    return 1;
  }
  size_t len = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2;
  } else if (b == 0xE0) {
    len = 3;
    lo = 0xA0;
  } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
    len = 3;
  } else if (b == 0xED) {
    len = 3;
    hi = 0x9F;
  } else if (b == 0xF0) {
    len = 4;
    lo = 0x90;
  } else if (b >= 0xF1 && b <= 0xF3) {
    len = 4;
  } else if (b == 0xF4) {
    len = 4;
    hi = 0x8F;
  } else {
    consumed = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if (i + k >= s.size()) {
      consumed = k;
      return 0;
    }
    const auto c = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = k == 1 ? lo : 0x80;
    const unsigned char h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) {
      consumed = k;
      return 0;
    }
  }
  return len;
}

} // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t consumed = 0;
    const size_t len = utf8_char_at(s, i, consumed);
    if (len == 0) {
      return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t consumed = 0;
    const size_t len = utf8_char_at(bytes, i, consumed);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      i += consumed;
    } else {
      out.append(bytes.data() + i, len);
      i += len;
    }
  }
  return out;
}


uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t len = utf8_length(b);
  uint32_t cp = len == 1   ? b
                : len == 2 ? (b & 0x1F)
                : len == 3 ? (b & 0x0F)
                           : (b & 0x07);
  for (size_t k = 1; k < len && i + k < s.size(); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  }
  i += len;
  return cp;
}

const std::array<uint32_t, 256>& byte_to_unicode() {
  // Printable Latin-1 bytes spell themselves; the others (controls, space,
  // soft hyphen...) take the code points from U+0100 on, in byte order.
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') ||
                             (b >= 0xA1 && b <= 0xAC) ||
                             (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

bool byte_level_to_bytes(std::string_view token, std::string& bytes) {
  // Inverse table: code points below 0x144 only.
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> inv{};
    inv.fill(-1);
    const auto& t = byte_to_unicode();
    for (int b = 0; b < 256; ++b) {
      inv[t[b]] = static_cast<int16_t>(b);
    }
    return inv;
  }();
  bytes.clear();
  size_t i = 0;
  while (i < token.size()) {
    const uint32_t cp = next_code_point(token, i);
    if (cp >= inverse.size() || inverse[cp] < 0) {
      return false;
    }
    bytes += static_cast<char>(inverse[cp]);
  }
  return true;
}

bool is_unicode_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// ------------------------------------------------------------------ Regex

namespace {

// One match data, JIT stack and context per thread, shared by every Regex:
// matching allocates nothing.
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 4 << 20, nullptr);
  MatchScratch() {
    if (stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, stack);
    }
  }
  ~MatchScratch() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    if (stack != nullptr) {
      pcre2_jit_stack_free(stack);
    }
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

// Oniguruma's \s in the Rust library is Unicode's White_Space; PCRE2 10.42
// adds U+180E (\h). Spell \s and \S as that set so both agree.
constexpr const char* kWhiteSpaceSet =
    "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}"
    "\\x{202f}\\x{205f}\\x{3000}";

std::string translate_pattern(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[i + 1];
      if (n == 's') {
        out += in_class ? std::string(kWhiteSpaceSet)
                        : "[" + std::string(kWhiteSpaceSet) + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceSet) + "]";
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        out += '^';
        ++i;
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {
        out += ']';
        ++i;
      }
      continue;
    }
    if (c == ']' && in_class) {
      in_class = false;
    }
    out += c;
  }
  return out;
}

} // namespace

Regex::Regex(const std::string& pattern, const std::string& where)
    : where_(where) {
  const std::string translated = translate_pattern(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
      PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    TORCH_CHECK(
        false, where, ": the regular expression '", pattern,
        "' does not compile (", reinterpret_cast<const char*>(message),
        " at offset ", offset, ")");
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); // falls back to the interpreter
  code_ = code;
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

bool Regex::find(
    std::string_view text, size_t start, size_t& begin, size_t& end) const {
  MatchScratch& s = scratch();
  const int rc = pcre2_match(
      static_cast<pcre2_code*>(code_),
      reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
      PCRE2_NO_UTF_CHECK, s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) {
    return false;
  }
  TORCH_CHECK(
      rc >= 0, where_, ": regular expression match failed (PCRE2 error ", rc,
      ")");
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
  begin = ov[0];
  end = ov[1];
  return true;
}

// ------------------------------------------------------------------ ICU

std::string unicode_normalize(std::string_view text, const std::string& form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (form == "NFC") {
    n = icu::Normalizer2::getNFCInstance(status);
  } else if (form == "NFD") {
    n = icu::Normalizer2::getNFDInstance(status);
  } else if (form == "NFKC") {
    n = icu::Normalizer2::getNFKCInstance(status);
  } else {
    n = icu::Normalizer2::getNFKDInstance(status);
  }
  TORCH_CHECK(U_SUCCESS(status), "ICU has no ", form, " normalizer");
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (n->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    return std::string(text);
  }
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  n->normalizeUTF8(0, piece, sink, nullptr, status);
  TORCH_CHECK(
      U_SUCCESS(status), form, " normalization failed: ", u_errorName(status));
  return out;
}

} // namespace torchtp::detail
