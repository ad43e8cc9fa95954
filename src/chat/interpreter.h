#pragma once

// Runs a parsed chat template over a context of values.

#include "chat/ast.h"
#include "chat/value.h"

#include <map>
#include <string>

namespace torchtp::chat {

/// Variables: a `for` loop and a macro call open a child scope; `if` does
/// not (as in @huggingface/jinja).
struct Scope {
  std::map<std::string, Value> variables;
  Scope* parent = nullptr;

  explicit Scope(Scope* p = nullptr) : parent(p) {}
  /// The variable, looked up through the parents; undefined if absent.
  Value lookup(const std::string& name) const;
  void set(const std::string& name, Value value) {
    variables[name] = std::move(value);
  }
};

/// The globals every template sees: true/false/none (and their title-case
/// spellings), raise_exception, range, strftime_now, namespace.
void add_globals(Scope& scope);

/// Renders `program` in `scope`. A `raise_exception(...)` in the template
/// raises c10::ValueError with its message; an operation on the wrong kinds
/// of values raises c10::TypeError naming the line.
std::string render(const NodeList& program, Scope& scope);

} // namespace torchtp::chat
