#pragma once

// The syntax tree of a chat template: one node type, its kind saying which
// fields it uses. Built by the parser, read by the interpreter.

#include <memory>
#include <string>
#include <vector>

namespace torchtp::chat {

struct Node;
using NodePtr = std::unique_ptr<Node>;
using NodeList = std::vector<NodePtr>;

enum class NodeKind {
  // Statements.
  kText, // text: the template's own text
  kComment,
  kIf,    // a[0] test, body, orelse
  kFor,   // a[0] target (identifier or tuple), a[1] iterable, body, orelse
  kSet,   // a[0] target, a[1] value (or null: body is a {% set %} block)
  kMacro, // name, a parameters (identifiers or keyword arguments), body
  kFilterBlock, // name, a arguments, body: the body's text through a filter
  kBreak,
  kContinue,
  // Expressions.
  kInteger,    // number
  kFloat,      // number
  kString,     // text
  kIdentifier, // name
  kArray,      // a items
  kTuple,      // a items
  kObject,     // a keys, body values
  kMember,     // a[0] object, a[1] property; computed: obj[...] not obj.name
  kSlice,      // a[0..2] start, stop, step (each may be null)
  kCall,       // a[0] callee, body arguments
  kKeywordArgument, // name = a[0]
  kUnary,           // name: operator, a[0]
  kBinary,          // name: operator, a[0], a[1]
  kFilter,  // a[0] operand, name, body arguments; computed: written as a call
  kTest,    // a[0] operand, name; negated
  kSelect,  // a[0] value if a[1] (no else)
  kTernary, // a[0] test, a[1] if true, a[2] if false
};

struct Node {
  NodeKind kind;
  int line = 0;
  std::string name; // identifier, operator, filter, test or macro name
  std::string text; // kText, kString
  double number = 0;
  bool computed = false;
  bool negated = false;
  NodeList a;
  NodeList body;
  NodeList orelse;

  Node(NodeKind k, int l) : kind(k), line(l) {}
};

} // namespace torchtp::chat
