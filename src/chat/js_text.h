#pragma once

// The string and number semantics of JavaScript, on UTF-8 strings: the
// reference the chat templates are checked against (@huggingface/jinja)
// runs on JavaScript's UTF-16 strings, so trimming, lengths and number
// formatting follow JavaScript's rules here.

#include "detail/utf8.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchtp::chat {

/// The code point starting at `s[i]`; advances `i` past it. Invalid UTF-8
/// decodes as U+FFFD, one byte at a time.
char32_t decode_utf8(std::string_view s, size_t& i);
using detail::append_utf8;
std::vector<std::string> code_points(std::string_view s);

/// JavaScript's `\s`: WhiteSpace and LineTerminator code points.
bool is_js_space(char32_t c);
/// The byte length of the JavaScript whitespace starting at `s[i]`, or 0.
size_t js_space_at(std::string_view s, size_t i);
/// String.prototype.trimStart / trimEnd / trim.
std::string js_trim_start(std::string_view s);
std::string js_trim_end(std::string_view s);
std::string js_trim(std::string_view s);

/// String.prototype.length: UTF-16 code units.
int64_t utf16_length(std::string_view s);

/// Number.prototype.toString() (shortest round-trip digits, JavaScript's
/// choice between fixed and exponential notation).
std::string js_number(double v);
/// JSON.stringify of a string; with `ensure_ascii` every code unit from
/// U+007F up as \uXXXX, as @huggingface/jinja's tojson does.
std::string js_json_quote(std::string_view s, bool ensure_ascii);

/// String.prototype.toUpperCase / toLowerCase (full Unicode mappings).
std::string js_upper(std::string_view s);
std::string js_lower(std::string_view s);

} // namespace torchtp::chat
