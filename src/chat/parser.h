#pragma once

// Tokens to a syntax tree, with Hugging Face's grammar and precedences, and
// the check that the tree uses only what the interpreter runs.

#include "chat/ast.h"
#include "chat/lexer.h"

#include <vector>

namespace torchtp::chat {

/// The template's statements. Raises c10::Error naming the line on a syntax
/// error and on any statement, filter, test, method or function the engine
/// does not implement.
NodeList parse(const std::vector<Token>& tokens);

} // namespace torchtp::chat
