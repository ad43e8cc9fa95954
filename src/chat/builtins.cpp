#include "chat/builtins.h"

#include <algorithm>
#include <array>

namespace torchtp::chat {

namespace {

// Filters of @huggingface/jinja that chat templates use, plus Jinja's
// `select` / `reject` with a test name (Llama 3.1 filters its builtin tools
// with `reject('equalto', ...)`).
constexpr std::array kFilters = {
    "abs",     "capitalize", "default", "dictsort", "first",      "float",
    "indent",  "int",        "items",   "join",     "keys",       "last",
    "length",  "list",       "lower",   "map",      "reject",     "rejectattr",
    "replace", "reverse",    "safe",    "select",   "selectattr", "sort",
    "string",  "title",      "tojson",  "trim",     "unique",     "upper",
    "values"};
constexpr std::array kTests = {"boolean",  "callable",  "defined",  "eq",
                               "equalto",  "even",      "false",    "integer",
                               "iterable", "lower",     "mapping",  "none",
                               "number",   "odd",       "sequence", "string",
                               "true",     "undefined", "upper"};
constexpr std::array kMethods = {
    "capitalize", "dictsort", "endswith", "get",    "items", "keys",
    "lower",      "lstrip",   "replace",  "rstrip", "split", "startswith",
    "strip",      "title",    "upper",    "values"};
constexpr std::array kFunctions = {
    "namespace", "raise_exception", "range", "strftime_now"};

template <size_t N>
bool contains(const std::array<const char*, N>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

template <size_t N>
std::string join(const std::array<const char*, N>& names) {
  std::string out;
  for (const char* n : names) {
    out += out.empty() ? "" : ", ";
    out += n;
  }
  return out;
}

} // namespace

bool is_known_filter(const std::string& name) {
  return contains(kFilters, name);
}
bool is_known_test(const std::string& name) {
  return contains(kTests, name);
}
bool is_known_method(const std::string& name) {
  return contains(kMethods, name);
}
bool is_known_function(const std::string& name) {
  return contains(kFunctions, name);
}
std::string known_filters() {
  return join(kFilters);
}
std::string known_tests() {
  return join(kTests);
}
std::string known_methods() {
  return join(kMethods);
}
std::string known_functions() {
  return join(kFunctions);
}

} // namespace torchtp::chat
