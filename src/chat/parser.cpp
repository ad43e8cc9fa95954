#include "chat/parser.h"

#include "chat/builtins.h"

#include <c10/util/Exception.h>

#include <set>
#include <string>

namespace torchtp::chat {

namespace {

NodePtr make(NodeKind kind, int line) {
  return std::make_unique<Node>(kind, line);
}

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  NodeList run() {
    NodeList program;
    while (pos_ < t_.size()) {
      program.push_back(parse_any());
    }
    for (const auto& node : program) {
      check_supported(*node);
    }
    return program;
  }

 private:
  int line() const {
    if (t_.empty()) {
      return 1;
    }
    return t_[std::min(pos_, t_.size() - 1)].line;
  }
  [[noreturn]] void fail(int at, const std::string& what) const {
    TORCH_CHECK(false, "torchtp::ChatTemplate: line ", at, ": ", what);
  }
  bool at_end() const {
    return pos_ >= t_.size();
  }
  bool is(TokenType type, size_t ahead = 0) const {
    return pos_ + ahead < t_.size() && t_[pos_ + ahead].type == type;
  }
  bool is_identifier(const char* name, size_t ahead = 0) const {
    return is(TokenType::kIdentifier, ahead) && t_[pos_ + ahead].value == name;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!is(TokenType::kOpenStatement) || !is(TokenType::kIdentifier, 1)) {
      return false;
    }
    for (const char* n : names) {
      if (t_[pos_ + 1].value == n) {
        return true;
      }
    }
    return false;
  }
  const Token& expect(TokenType type, const char* what) {
    if (at_end()) {
      fail(
          line(),
          std::string("expected ") + what + ", got the end of the template");
    }
    if (t_[pos_].type != type) {
      fail(
          t_[pos_].line,
          std::string("expected ") + what + ", got " +
              token_type_name(t_[pos_].type) +
              (t_[pos_].value.empty() ? "" : " '" + t_[pos_].value + "'"));
    }
    return t_[pos_++];
  }
  void expect_identifier(const char* name) {
    if (!is_identifier(name)) {
      fail(line(), std::string("expected '") + name + "'");
    }
    ++pos_;
  }
  // The body of a block up to one of `ends`; a missing end names the
  // block and where it opened.
  NodeList parse_until(
      std::initializer_list<const char*> ends, const char* block, int opened) {
    NodeList body;
    while (!is_statement(ends)) {
      if (at_end()) {
        fail(opened, std::string("{% ") + block + " %} is never closed");
      }
      body.push_back(parse_any());
    }
    return body;
  }

  NodePtr parse_any();
  NodePtr parse_statement();
  NodePtr parse_set(int at);
  NodePtr parse_if(int at);
  NodePtr parse_for(int at);
  NodePtr parse_macro(int at);
  NodePtr parse_expression_sequence(bool primary);
  NodePtr parse_expression() {
    return parse_if_expression();
  }
  NodePtr parse_if_expression();
  NodePtr parse_or();
  NodePtr parse_and();
  NodePtr parse_not();
  NodePtr parse_comparison();
  NodePtr parse_additive();
  NodePtr parse_multiplicative();
  NodePtr parse_power();
  NodePtr parse_test();
  NodePtr parse_filter();
  NodePtr parse_sign();
  NodePtr parse_call_member();
  NodePtr parse_call(NodePtr callee);
  NodeList parse_arguments(bool parameters);
  NodePtr parse_member(NodePtr object);
  NodePtr parse_subscript();
  NodePtr parse_primary();

  void check_supported(const Node& node);

  const std::vector<Token>& t_;
  size_t pos_ = 0;
  std::set<std::string> macros_;
};

NodePtr Parser::parse_any() {
  const Token& tok = t_[pos_];
  switch (tok.type) {
    case TokenType::kComment: {
      ++pos_;
      return make(NodeKind::kComment, tok.line);
    }
    case TokenType::kText: {
      auto n = make(NodeKind::kText, tok.line);
      n->text = tok.value;
      ++pos_;
      return n;
    }
    case TokenType::kOpenStatement:
      return parse_statement();
    case TokenType::kOpenExpression: {
      ++pos_;
      auto e = parse_expression();
      expect(TokenType::kCloseExpression, "'}}'");
      return e;
    }
    default:
      fail(tok.line, std::string("unexpected ") + token_type_name(tok.type));
  }
}

NodePtr Parser::parse_statement() {
  const int at = t_[pos_].line;
  ++pos_; // {%
  if (!is(TokenType::kIdentifier)) {
    fail(at, "expected a statement name after '{%'");
  }
  const std::string name = t_[pos_].value;
  ++pos_;
  if (name == "set") {
    return parse_set(at);
  }
  if (name == "if") {
    auto n = parse_if(at);
    expect(TokenType::kOpenStatement, "'{%'");
    expect_identifier("endif");
    expect(TokenType::kCloseStatement, "'%}'");
    return n;
  }
  if (name == "for") {
    auto n = parse_for(at);
    expect(TokenType::kOpenStatement, "'{%'");
    expect_identifier("endfor");
    expect(TokenType::kCloseStatement, "'%}'");
    return n;
  }
  if (name == "macro") {
    auto n = parse_macro(at);
    expect(TokenType::kOpenStatement, "'{%'");
    expect_identifier("endmacro");
    expect(TokenType::kCloseStatement, "'%}'");
    return n;
  }
  if (name == "filter") {
    auto n = make(NodeKind::kFilterBlock, at);
    auto filter = parse_primary();
    if (filter->kind != NodeKind::kIdentifier) {
      fail(at, "expected a filter name after {% filter");
    }
    n->name = filter->name;
    if (is(TokenType::kOpenParen)) {
      n->a = parse_arguments(false);
    }
    expect(TokenType::kCloseStatement, "'%}'");
    n->body = parse_until({"endfilter"}, "filter", at);
    ++pos_; // {%
    expect_identifier("endfilter");
    expect(TokenType::kCloseStatement, "'%}'");
    return n;
  }
  if (name == "break" || name == "continue") {
    expect(TokenType::kCloseStatement, "'%}'");
    return make(name == "break" ? NodeKind::kBreak : NodeKind::kContinue, at);
  }
  fail(
      at, "unsupported statement {% " + name +
              " %} (supported: set, if/elif/else, for/else, macro, filter, "
              "break, continue, generation)");
}

NodePtr Parser::parse_set(int at) {
  auto n = make(NodeKind::kSet, at);
  n->a.push_back(parse_expression_sequence(false));
  if (is(TokenType::kEquals)) {
    ++pos_;
    n->a.push_back(parse_expression_sequence(false));
  } else {
    n->a.push_back(nullptr);
    expect(TokenType::kCloseStatement, "'%}'");
    n->body = parse_until({"endset"}, "set", at);
    ++pos_; // {%
    expect_identifier("endset");
  }
  expect(TokenType::kCloseStatement, "'%}'");
  const NodeKind target = n->a[0]->kind;
  if (target != NodeKind::kIdentifier && target != NodeKind::kTuple &&
      !(target == NodeKind::kMember && !n->a[0]->computed)) {
    fail(
        at,
        "{% set %} assigns to a name, a tuple of names or a "
        "namespace attribute");
  }
  return n;
}

NodePtr Parser::parse_if(int at) {
  auto n = make(NodeKind::kIf, at);
  n->a.push_back(parse_expression());
  expect(TokenType::kCloseStatement, "'%}'");
  n->body = parse_until({"elif", "else", "endif"}, "if", at);
  if (is_statement({"elif"})) {
    const int elif_at = t_[pos_].line;
    pos_ += 2;
    n->orelse.push_back(parse_if(elif_at));
  } else if (is_statement({"else"})) {
    pos_ += 2;
    expect(TokenType::kCloseStatement, "'%}'");
    n->orelse = parse_until({"endif"}, "if", at);
  }
  return n;
}

NodePtr Parser::parse_for(int at) {
  auto n = make(NodeKind::kFor, at);
  auto target = parse_expression_sequence(true);
  if (target->kind != NodeKind::kIdentifier &&
      target->kind != NodeKind::kTuple) {
    fail(at, "{% for %} expects a name or a tuple of names before 'in'");
  }
  n->a.push_back(std::move(target));
  if (!is_identifier("in")) {
    fail(at, "expected 'in' in {% for %}");
  }
  ++pos_;
  n->a.push_back(parse_expression());
  expect(TokenType::kCloseStatement, "'%}'");
  n->body = parse_until({"endfor", "else"}, "for", at);
  if (is_statement({"else"})) {
    pos_ += 2;
    expect(TokenType::kCloseStatement, "'%}'");
    n->orelse = parse_until({"endfor"}, "for", at);
  }
  return n;
}

NodePtr Parser::parse_macro(int at) {
  auto n = make(NodeKind::kMacro, at);
  auto name = parse_primary();
  if (name->kind != NodeKind::kIdentifier) {
    fail(at, "expected a macro name");
  }
  n->name = name->name;
  n->a = parse_arguments(true);
  expect(TokenType::kCloseStatement, "'%}'");
  macros_.insert(n->name);
  n->body = parse_until({"endmacro"}, "macro", at);
  return n;
}

NodePtr Parser::parse_expression_sequence(bool primary) {
  const int at = line();
  NodePtr first = primary ? parse_primary() : parse_expression();
  if (!is(TokenType::kComma)) {
    return first;
  }
  auto tuple = make(NodeKind::kTuple, at);
  tuple->a.push_back(std::move(first));
  while (is(TokenType::kComma)) {
    ++pos_;
    tuple->a.push_back(primary ? parse_primary() : parse_expression());
  }
  return tuple;
}

NodePtr Parser::parse_if_expression() {
  auto a = parse_or();
  if (is_identifier("if")) {
    const int at = t_[pos_].line;
    ++pos_;
    auto test = parse_or();
    if (is_identifier("else")) {
      ++pos_;
      auto n = make(NodeKind::kTernary, at);
      n->a.push_back(std::move(test));
      n->a.push_back(std::move(a));
      n->a.push_back(parse_if_expression());
      return n;
    }
    auto n = make(NodeKind::kSelect, at);
    n->a.push_back(std::move(a));
    n->a.push_back(std::move(test));
    return n;
  }
  return a;
}

NodePtr binary(const Token& op, NodePtr left, NodePtr right) {
  auto n = make(NodeKind::kBinary, op.line);
  n->name = op.value;
  n->a.push_back(std::move(left));
  n->a.push_back(std::move(right));
  return n;
}

NodePtr Parser::parse_or() {
  auto left = parse_and();
  while (is_identifier("or")) {
    const Token& op = t_[pos_++];
    left = binary(op, std::move(left), parse_and());
  }
  return left;
}

NodePtr Parser::parse_and() {
  auto left = parse_not();
  while (is_identifier("and")) {
    const Token& op = t_[pos_++];
    left = binary(op, std::move(left), parse_not());
  }
  return left;
}

NodePtr Parser::parse_not() {
  if (is_identifier("not")) {
    auto n = make(NodeKind::kUnary, t_[pos_].line);
    n->name = "not";
    ++pos_;
    n->a.push_back(parse_not());
    return n;
  }
  return parse_comparison();
}

NodePtr Parser::parse_comparison() {
  auto left = parse_additive();
  while (true) {
    Token op;
    if (is_identifier("not") && is_identifier("in", 1)) {
      op = {TokenType::kIdentifier, "not in", t_[pos_].line};
      pos_ += 2;
    } else if (is_identifier("in") || is(TokenType::kComparison)) {
      op = t_[pos_++];
    } else {
      break;
    }
    left = binary(op, std::move(left), parse_additive());
  }
  return left;
}

NodePtr Parser::parse_additive() {
  auto left = parse_multiplicative();
  while (is(TokenType::kAdditive)) {
    const Token& op = t_[pos_++];
    left = binary(op, std::move(left), parse_multiplicative());
  }
  return left;
}

NodePtr Parser::parse_multiplicative() {
  auto left = parse_power();
  while (is(TokenType::kMultiplicative)) {
    const Token& op = t_[pos_++];
    left = binary(op, std::move(left), parse_power());
  }
  return left;
}

NodePtr Parser::parse_power() {
  auto left = parse_test();
  while (is(TokenType::kPower)) {
    const Token& op = t_[pos_++];
    left = binary(op, std::move(left), parse_test());
  }
  return left;
}

NodePtr Parser::parse_test() {
  auto operand = parse_filter();
  while (is_identifier("is")) {
    const int at = t_[pos_].line;
    ++pos_;
    const bool negated = is_identifier("not");
    pos_ += negated ? 1 : 0;
    auto test = parse_primary();
    if (test->kind != NodeKind::kIdentifier) {
      fail(at, "expected a test name after 'is'");
    }
    if (is(TokenType::kOpenParen)) {
      fail(
          at, "tests with arguments ('is " + test->name +
                  "(...)') are not supported");
    }
    auto n = make(NodeKind::kTest, at);
    n->name = test->name;
    n->negated = negated;
    n->a.push_back(std::move(operand));
    operand = std::move(n);
  }
  return operand;
}

NodePtr Parser::parse_filter() {
  auto operand = parse_sign();
  while (is(TokenType::kPipe)) {
    const int at = t_[pos_].line;
    ++pos_;
    auto filter = parse_primary();
    if (filter->kind != NodeKind::kIdentifier) {
      fail(at, "expected a filter name after '|'");
    }
    auto n = make(NodeKind::kFilter, at);
    n->name = filter->name;
    if (is(TokenType::kOpenParen)) {
      n->computed = true;
      n->body = parse_arguments(false);
    }
    n->a.push_back(std::move(operand));
    operand = std::move(n);
  }
  return operand;
}

NodePtr Parser::parse_sign() {
  if (!at_end() && (is(TokenType::kUnary) || is(TokenType::kAdditive)) &&
      (t_[pos_].value == "-" || t_[pos_].value == "+")) {
    auto n = make(NodeKind::kUnary, t_[pos_].line);
    n->name = t_[pos_++].value;
    n->a.push_back(parse_sign());
    return n;
  }
  return parse_call_member();
}

NodePtr Parser::parse_call_member() {
  auto member = parse_member(parse_primary());
  if (is(TokenType::kOpenParen)) {
    return parse_call(std::move(member));
  }
  return member;
}

NodePtr Parser::parse_call(NodePtr callee) {
  auto n = make(NodeKind::kCall, callee->line);
  n->body = parse_arguments(false);
  n->a.push_back(std::move(callee));
  NodePtr e = parse_member(std::move(n));
  if (is(TokenType::kOpenParen)) {
    e = parse_call(std::move(e));
  }
  return e;
}

NodeList Parser::parse_arguments(bool parameters) {
  const int at = line();
  expect(TokenType::kOpenParen, "'('");
  NodeList args;
  bool saw_keyword = false;
  std::set<std::string> names;
  while (!is(TokenType::kCloseParen)) {
    if (at_end()) {
      fail(at, "unclosed '(' in an argument list");
    }
    if (is(TokenType::kPower) ||
        (is(TokenType::kMultiplicative) && t_[pos_].value == "*")) {
      fail(line(), "argument unpacking (* / **) is not supported");
    }
    NodePtr arg = parse_expression();
    if (is(TokenType::kEquals)) {
      ++pos_;
      if (arg->kind != NodeKind::kIdentifier) {
        fail(arg->line, "expected a name before '=' in an argument list");
      }
      auto kw = make(NodeKind::kKeywordArgument, arg->line);
      kw->name = arg->name;
      kw->a.push_back(parse_expression());
      arg = std::move(kw);
      saw_keyword = true;
    } else if (saw_keyword) {
      fail(
          arg->line,
          parameters ? "a parameter without default follows one with a default"
                     : "a positional argument follows a keyword argument");
    }
    if (parameters) {
      if (arg->kind != NodeKind::kIdentifier &&
          arg->kind != NodeKind::kKeywordArgument) {
        fail(arg->line, "expected a parameter name");
      }
      if (!names.insert(arg->name).second) {
        fail(arg->line, "duplicate parameter '" + arg->name + "'");
      }
    } else if (
        arg->kind == NodeKind::kKeywordArgument &&
        !names.insert(arg->name).second) {
      fail(arg->line, "keyword argument '" + arg->name + "' given twice");
    }
    args.push_back(std::move(arg));
    if (is(TokenType::kComma)) {
      ++pos_;
    }
  }
  ++pos_; // )
  return args;
}

NodePtr Parser::parse_member(NodePtr object) {
  while (is(TokenType::kDot) || is(TokenType::kOpenSquare)) {
    const bool computed = is(TokenType::kOpenSquare);
    const int at = t_[pos_].line;
    ++pos_;
    auto n = make(NodeKind::kMember, at);
    n->computed = computed;
    n->a.push_back(std::move(object));
    if (computed) {
      n->a.push_back(parse_subscript());
      expect(TokenType::kCloseSquare, "']'");
    } else {
      auto property = parse_primary();
      if (property->kind != NodeKind::kIdentifier &&
          property->kind != NodeKind::kInteger) {
        fail(at, "expected a name or an integer after '.'");
      }
      n->a.push_back(std::move(property));
    }
    object = std::move(n);
  }
  return object;
}

NodePtr Parser::parse_subscript() {
  const int at = line();
  NodeList parts;
  bool slice = false;
  while (!is(TokenType::kCloseSquare)) {
    if (at_end()) {
      fail(at, "unclosed '['");
    }
    if (is(TokenType::kColon)) {
      parts.push_back(nullptr);
      ++pos_;
      slice = true;
    } else {
      parts.push_back(parse_expression());
      if (is(TokenType::kColon)) {
        ++pos_;
        slice = true;
      }
    }
  }
  if (parts.empty()) {
    fail(at, "empty subscript '[]'");
  }
  if (!slice) {
    return std::move(parts[0]);
  }
  if (parts.size() > 3) {
    fail(at, "a slice has at most 3 parts");
  }
  auto n = make(NodeKind::kSlice, at);
  parts.resize(3);
  n->a = std::move(parts);
  return n;
}

NodePtr Parser::parse_primary() {
  if (at_end()) {
    fail(line(), "unexpected end of the template in an expression");
  }
  const Token& tok = t_[pos_++];
  switch (tok.type) {
    case TokenType::kNumber: {
      const bool is_float = tok.value.find('.') != std::string::npos;
      auto n = make(is_float ? NodeKind::kFloat : NodeKind::kInteger, tok.line);
      n->number = std::stod(tok.value);
      return n;
    }
    case TokenType::kString: {
      auto n = make(NodeKind::kString, tok.line);
      n->text = tok.value;
      while (is(TokenType::kString)) {
        n->text += t_[pos_++].value;
      }
      return n;
    }
    case TokenType::kIdentifier: {
      auto n = make(NodeKind::kIdentifier, tok.line);
      n->name = tok.value;
      return n;
    }
    case TokenType::kOpenParen: {
      auto e = parse_expression_sequence(false);
      expect(TokenType::kCloseParen, "')'");
      return e;
    }
    case TokenType::kOpenSquare: {
      auto n = make(NodeKind::kArray, tok.line);
      while (!is(TokenType::kCloseSquare)) {
        if (at_end()) {
          fail(tok.line, "unclosed '['");
        }
        n->a.push_back(parse_expression());
        if (is(TokenType::kComma)) {
          ++pos_;
        }
      }
      ++pos_;
      return n;
    }
    case TokenType::kOpenCurly: {
      auto n = make(NodeKind::kObject, tok.line);
      while (!is(TokenType::kCloseCurly)) {
        if (at_end()) {
          fail(tok.line, "unclosed '{'");
        }
        n->a.push_back(parse_expression());
        expect(TokenType::kColon, "':' in a dict literal");
        n->body.push_back(parse_expression());
        if (is(TokenType::kComma)) {
          ++pos_;
        }
      }
      ++pos_;
      return n;
    }
    default:
      fail(
          tok.line, std::string("unexpected ") + token_type_name(tok.type) +
                        (tok.value.empty() ? "" : " '" + tok.value + "'"));
  }
}

// Every filter, test, method and function the tree names must be one the
// interpreter runs: refused here, never halfway through a render.
void Parser::check_supported(const Node& node) {
  switch (node.kind) {
    case NodeKind::kFilter:
    case NodeKind::kFilterBlock:
      if (!is_known_filter(node.name)) {
        fail(
            node.line, "unsupported filter '" + node.name +
                           "' (supported: " + known_filters() + ")");
      }
      break;
    case NodeKind::kTest:
      if (!is_known_test(node.name)) {
        fail(
            node.line, "unsupported test 'is " + node.name +
                           "' (supported: " + known_tests() + ")");
      }
      break;
    case NodeKind::kCall: {
      const Node& callee = *node.a[0];
      if (callee.kind == NodeKind::kIdentifier) {
        if (!is_known_function(callee.name) && !macros_.count(callee.name)) {
          fail(
              node.line, "unsupported function '" + callee.name +
                             "()' (supported: " + known_functions() +
                             " and the template's macros)");
        }
      } else if (
          callee.kind == NodeKind::kMember && !callee.computed &&
          callee.a[1]->kind == NodeKind::kIdentifier) {
        if (!is_known_method(callee.a[1]->name)) {
          fail(
              node.line, "unsupported method '." + callee.a[1]->name +
                             "()' (supported: " + known_methods() + ")");
        }
      } else {
        fail(node.line, "only named functions and methods can be called");
      }
      break;
    }
    default:
      break;
  }
  for (const auto* list : {&node.a, &node.body, &node.orelse}) {
    for (const auto& child : *list) {
      if (child) {
        check_supported(*child);
      }
    }
  }
}

} // namespace

NodeList parse(const std::vector<Token>& tokens) {
  return Parser(tokens).run();
}

} // namespace torchtp::chat
