#include "chat/js_text.h"

#include <c10/util/Exception.h>
#include <unicode/ustring.h>

#include <charconv>
#include <cmath>
#include <cstdlib>

namespace torchtp::chat {

char32_t decode_utf8(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int len = b0 < 0x80           ? 1
            : (b0 >> 5) == 0x6  ? 2
            : (b0 >> 4) == 0xE  ? 3
            : (b0 >> 3) == 0x1E ? 4
                                : 0;
  if (len == 0 || i + len > s.size()) {
    ++i;
    return 0xFFFD;
  }
  char32_t c = len == 1 ? b0 : b0 & (0x7F >> len);
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      return 0xFFFD;
    }
    c = (c << 6) | (b & 0x3F);
  }
  i += len;
  return c;
}


std::vector<std::string> code_points(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    decode_utf8(s, i);
    out.emplace_back(s.substr(start, i - start));
  }
  return out;
}

bool is_js_space(char32_t c) {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

size_t js_space_at(std::string_view s, size_t i) {
  if (i >= s.size()) {
    return 0;
  }
  size_t j = i;
  return is_js_space(decode_utf8(s, j)) ? j - i : 0;
}

std::string js_trim_start(std::string_view s) {
  size_t i = 0;
  while (size_t n = js_space_at(s, i)) {
    i += n;
  }
  return std::string(s.substr(i));
}

std::string js_trim_end(std::string_view s) {
  // The end of the last code point that is not whitespace.
  size_t end = 0;
  for (size_t i = 0; i < s.size();) {
    if (!is_js_space(decode_utf8(s, i))) {
      end = i;
    }
  }
  return std::string(s.substr(0, end));
}

std::string js_trim(std::string_view s) {
  return js_trim_end(js_trim_start(s));
}

int64_t utf16_length(std::string_view s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size();) {
    n += decode_utf8(s, i) >= 0x10000 ? 2 : 1;
  }
  return n;
}

std::string js_number(double v) {
  if (std::isnan(v)) {
    return "NaN";
  }
  if (std::isinf(v)) {
    return v > 0 ? "Infinity" : "-Infinity";
  }
  if (v == 0) {
    return "0";
  }
  // Shortest round-trip digits as d.ddde±x, then ECMAScript's
  // Number::toString layout: k digits, decimal exponent n.
  char buf[64];
  const auto r = std::to_chars(
      buf, buf + sizeof(buf), std::fabs(v), std::chars_format::scientific);
  const std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string digits;
  for (size_t i = 0; i < e; ++i) {
    if (sci[i] != '.') {
      digits += sci[i];
    }
  }
  const int k = static_cast<int>(digits.size());
  const int n = std::atoi(sci.c_str() + e + 1) + 1;
  std::string out = v < 0 ? "-" : "";
  if (k <= n && n <= 21) {
    out += digits + std::string(n - k, '0');
  } else if (0 < n && n <= 21) {
    out += digits.substr(0, n) + "." + digits.substr(n);
  } else if (-6 < n && n <= 0) {
    out += "0." + std::string(-n, '0') + digits;
  } else {
    out += digits.substr(0, 1);
    if (k > 1) {
      out += "." + digits.substr(1);
    }
    out += "e";
    out += n - 1 >= 0 ? "+" : "-";
    out += std::to_string(std::abs(n - 1));
  }
  return out;
}

namespace {

void append_u_escape(std::string& out, unsigned unit) {
  static const char* hex = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) {
    out += hex[(unit >> shift) & 0xF];
  }
}

} // namespace

std::string js_json_quote(std::string_view s, bool ensure_ascii) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t c = decode_utf8(s, i);
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      append_u_escape(out, c);
    } else if (ensure_ascii && c >= 0x7F) {
      if (c >= 0x10000) {
        append_u_escape(out, 0xD800 + ((c - 0x10000) >> 10));
        append_u_escape(out, 0xDC00 + ((c - 0x10000) & 0x3FF));
      } else {
        append_u_escape(out, c);
      }
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  return out + "\"";
}

namespace {

std::u16string to_utf16(std::string_view s) {
  std::u16string out;
  for (size_t i = 0; i < s.size();) {
    const char32_t c = decode_utf8(s, i);
    if (c >= 0x10000) {
      out += static_cast<char16_t>(0xD800 + ((c - 0x10000) >> 10));
      out += static_cast<char16_t>(0xDC00 + ((c - 0x10000) & 0x3FF));
    } else {
      out += static_cast<char16_t>(c);
    }
  }
  return out;
}

std::string from_utf16(const std::u16string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    char32_t c = s[i];
    if (c >= 0xD800 && c < 0xDC00 && i + 1 < s.size()) {
      c = 0x10000 + ((c - 0xD800) << 10) + (s[++i] - 0xDC00);
    }
    append_utf8(out, c);
  }
  return out;
}

// ICU's locale-independent full case mappings: the same tables as
// JavaScript's toUpperCase / toLowerCase ("ß" -> "SS").
std::string change_case(std::string_view s, bool upper) {
  const std::u16string in = to_utf16(s);
  std::u16string out(in.size() * 3 + 1, u'\0');
  UErrorCode status = U_ZERO_ERROR;
  const auto f = upper ? u_strToUpper : u_strToLower;
  const int32_t n =
      f(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()),
        reinterpret_cast<const UChar*>(in.data()),
        static_cast<int32_t>(in.size()), "", &status);
  TORCH_CHECK(
      U_SUCCESS(status),
      "torchtp::ChatTemplate: case mapping failed: ", u_errorName(status));
  out.resize(n);
  return from_utf16(out);
}

} // namespace

std::string js_upper(std::string_view s) {
  return change_case(s, true);
}

std::string js_lower(std::string_view s) {
  return change_case(s, false);
}

} // namespace torchtp::chat
