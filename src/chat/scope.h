#pragma once

// The variables of a render: a `for` loop and a macro call open a child
// scope; `if` does not (as in @huggingface/jinja).

#include "chat/value.h"

#include <map>
#include <string>
#include <utility>

namespace torchtp::chat {

struct Scope {
  std::map<std::string, Value> variables;
  Scope* parent = nullptr;

  explicit Scope(Scope* p = nullptr) : parent(p) {}
  /// The variable, looked up through the parents; undefined if absent.
  Value lookup(const std::string& name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent) {
      auto it = s->variables.find(name);
      if (it != s->variables.end()) {
        return it->second;
      }
    }
    return Value();
  }
  void set(const std::string& name, Value value) {
    variables[name] = std::move(value);
  }
};

} // namespace torchtp::chat
