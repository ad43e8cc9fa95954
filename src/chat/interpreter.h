#pragma once

// Runs a parsed chat template over a context of values: the statements
// and expressions; the filters, tests, methods and functions they call are
// in builtins.cpp.

#include "chat/ast.h"
#include "chat/scope.h"

#include <string>

namespace torchtp::chat {

/// Renders `program` in `scope`. A `raise_exception(...)` in the template
/// raises c10::ValueError with its message; an operation on the wrong kinds
/// of values raises c10::TypeError naming the line.
std::string render(const NodeList& program, Scope& scope);

} // namespace torchtp::chat
