#pragma once

// The names the engine knows: a template naming anything else is refused
// when it is parsed, so that a server refuses it at startup rather than on
// the first request that reaches the construct. One list per kind, read by
// the parser (to refuse) and matched by the interpreter (to run).

#include <string>

namespace torchtp::chat {

/// Filters: `x | name` or `x | name(args)`.
bool is_known_filter(const std::string& name);
/// Tests: `x is name` / `x is not name`.
bool is_known_test(const std::string& name);
/// Methods of strings and mappings: `x.name(args)`.
bool is_known_method(const std::string& name);
/// Global functions: `name(args)` (besides the template's own macros).
bool is_known_function(const std::string& name);

/// Comma-separated lists of the names above, for error messages and docs.
std::string known_filters();
std::string known_tests();
std::string known_methods();
std::string known_functions();

} // namespace torchtp::chat
