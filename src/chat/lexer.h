#pragma once

// The first stage of the chat-template engine: Hugging Face's preprocessing
// (trim_blocks, lstrip_blocks, the `{% generation %}` tag) and the tokens,
// each with the line of the source it came from.

#include <string>
#include <vector>

namespace torchtp::chat {

enum class TokenType {
  kText,
  kNumber,
  kString,
  kIdentifier,
  kEquals,
  kOpenParen,
  kCloseParen,
  kOpenStatement,
  kCloseStatement,
  kOpenExpression,
  kCloseExpression,
  kOpenSquare,
  kCloseSquare,
  kOpenCurly,
  kCloseCurly,
  kComma,
  kDot,
  kColon,
  kPipe,
  kAdditive,       // + - ~
  kMultiplicative, // * / // %
  kPower,          // **
  kComparison,     // < > <= >= == !=
  kUnary,          // a sign not followed by digits
  kComment,
};

struct Token {
  TokenType type;
  std::string value;
  int line;
};

/// The tokens of a template source, after the whitespace rules Hugging Face
/// applies (a single trailing newline dropped, lstrip_blocks, trim_blocks,
/// `{%-` / `-%}` and friends). Raises c10::Error naming the line on a
/// character or escape the language does not have.
std::vector<Token> tokenize(const std::string& source);

const char* token_type_name(TokenType type);

} // namespace torchtp::chat
