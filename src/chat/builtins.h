#pragma once

// The filters, tests, methods and functions of the engine, and their names:
// a template naming anything else is refused when it is parsed, so that a
// server refuses it at startup rather than on the first request that
// reaches the construct. The lists and the code live here together, so
// they cannot drift apart; the parser reads the lists, the interpreter
// calls the code.

#include "chat/value.h"

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

/// `v | name(args)`: one of the filters above, with @huggingface/jinja's
/// semantics (and Python's for select/reject, default without arguments).
/// Raises KindError when the filter does not apply to `v`'s kind.
Value apply_filter(
    const std::string& name,
    const Value& v,
    const Arguments& args,
    Scope& scope);

/// `v is name`: one of the tests above; `arg` is the value equalto / eq
/// compare with (from select / reject).
bool run_test(const std::string& name, const Value& v, const Value* arg);

/// `object.name`: a method of a string or mapping as a function value, a
/// string's or list's `length`, else undefined.
Value builtin_member(const Value& object, const std::string& name);

/// The globals every template sees: true/false/none (and their title-case
/// spellings), raise_exception, range, strftime_now, namespace.
void add_globals(Scope& scope);

} // namespace torchtp::chat
