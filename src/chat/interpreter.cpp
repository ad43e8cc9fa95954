#include "chat/interpreter.h"

#include "chat/builtins.h"
#include "chat/js_text.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <ctime>

namespace torchtp::chat {

using Kind = Value::Kind;

namespace {

struct BreakSignal {};
struct ContinueSignal {};

// Python's slice on a sequence of n items (the reference's `slice`).
std::vector<size_t> slice_indices(
    int64_t n, const Value& start_v, const Value& stop_v, const Value& step_v) {
  for (const Value* v : {&start_v, &stop_v, &step_v}) {
    if (!v->is(Kind::kInteger) && !v->is(Kind::kUndefined)) {
      kind_error("slice bounds must be integers");
    }
  }
  const int64_t step =
      step_v.is(Kind::kUndefined) ? 1 : static_cast<int64_t>(step_v.number);
  if (step == 0) {
    kind_error("slice step cannot be zero");
  }
  int64_t start, stop;
  if (step > 0) {
    start =
        start_v.is(Kind::kUndefined) ? 0 : static_cast<int64_t>(start_v.number);
    stop =
        stop_v.is(Kind::kUndefined) ? n : static_cast<int64_t>(stop_v.number);
    start = start < 0 ? std::max<int64_t>(n + start, 0) : std::min(start, n);
    stop = stop < 0 ? std::max<int64_t>(n + stop, 0) : std::min(stop, n);
  } else {
    start = start_v.is(Kind::kUndefined) ? n - 1
                                         : static_cast<int64_t>(start_v.number);
    stop =
        stop_v.is(Kind::kUndefined) ? -1 : static_cast<int64_t>(stop_v.number);
    start =
        start < 0 ? std::max<int64_t>(n + start, -1) : std::min(start, n - 1);
    stop = stop < -1 ? std::max<int64_t>(n + stop, -1) : std::min(stop, n - 1);
  }
  std::vector<size_t> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    out.push_back(static_cast<size_t>(i));
  }
  return out;
}

class Interpreter {
 public:
  std::string block(const NodeList& nodes, Scope& scope) {
    std::string out;
    for (const auto& node : nodes) {
      const Value v = eval(*node, scope);
      if (!v.is(Kind::kNone) && !v.is(Kind::kUndefined)) {
        out += v.to_output();
      }
    }
    return out;
  }

  Value eval(const Node& n, Scope& scope) {
    try {
      return eval_node(n, scope);
    } catch (const KindError& e) {
      TORCH_CHECK_TYPE(
          false, "torchtp::ChatTemplate: line ", n.line, ": ", e.message);
    }
  }

 private:
  Value eval_node(const Node& n, Scope& scope);
  Value eval_binary(const Node& n, Scope& scope);
  Value eval_member(const Node& n, Scope& scope);
  Value eval_call(const Node& n, Scope& scope);
  Value eval_filter(const Node& n, Scope& scope);
  Value eval_for(const Node& n, Scope& scope);
  Value eval_set(const Node& n, Scope& scope);
  Value define_macro(const Node& n, Scope& scope);
  Arguments eval_arguments(const NodeList& args, Scope& scope) {
    Arguments out;
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKeywordArgument) {
        out.positional.push_back(eval(*a, scope));
      }
    }
    for (const auto& a : args) {
      if (a->kind == NodeKind::kKeywordArgument) {
        if (out.keyword.find(a->name) != nullptr) {
          kind_error("keyword argument '" + a->name + "' given twice");
        }
        out.keyword.set(a->name, eval(*a->a[0], scope));
      }
    }
    return out;
  }
};

Value Interpreter::eval_node(const Node& n, Scope& scope) {
  switch (n.kind) {
    case NodeKind::kText:
    case NodeKind::kString:
      return Value::from(n.text);
    case NodeKind::kComment:
      return Value::none();
    case NodeKind::kInteger:
      return Value::integer(n.number);
    case NodeKind::kFloat:
      return Value::floating(n.number);
    case NodeKind::kIdentifier:
      return scope.lookup(n.name);
    case NodeKind::kArray:
    case NodeKind::kTuple: {
      Array items;
      for (const auto& e : n.a) {
        items.push_back(eval(*e, scope));
      }
      return Value::from(std::move(items));
    }
    case NodeKind::kObject: {
      Object o;
      for (size_t i = 0; i < n.a.size(); ++i) {
        const Value key = eval(*n.a[i], scope);
        if (!key.is(Kind::kString)) {
          kind_error(
              std::string("dict keys must be strings, got a ") +
              kind_name(key.kind));
        }
        o.set(key.string, eval(*n.body[i], scope));
      }
      return Value::from(std::move(o));
    }
    case NodeKind::kMember:
      return eval_member(n, scope);
    case NodeKind::kCall:
      return eval_call(n, scope);
    case NodeKind::kUnary: {
      const Value v = eval(*n.a[0], scope);
      if (n.name == "not") {
        return Value::from(!v.truthy());
      }
      if (!v.is_numeric() && !v.is(Kind::kBool)) {
        kind_error("unary " + n.name + " on a " + kind_name(v.kind));
      }
      const double x = v.is(Kind::kBool) ? (v.boolean ? 1 : 0) : v.number;
      const double r = n.name == "-" ? -x : x;
      return v.is(Kind::kFloat) ? Value::floating(r) : Value::integer(r);
    }
    case NodeKind::kBinary:
      return eval_binary(n, scope);
    case NodeKind::kFilter:
      return eval_filter(n, scope);
    case NodeKind::kTest: {
      const Value v = eval(*n.a[0], scope);
      return Value::from(run_test(n.name, v, nullptr) != n.negated);
    }
    case NodeKind::kSelect:
      return eval(*n.a[1], scope).truthy() ? eval(*n.a[0], scope) : Value();
    case NodeKind::kTernary:
      return eval(*n.a[0], scope).truthy() ? eval(*n.a[1], scope)
                                           : eval(*n.a[2], scope);
    case NodeKind::kIf:
      return Value::from(
          block(eval(*n.a[0], scope).truthy() ? n.body : n.orelse, scope));
    case NodeKind::kFor:
      return eval_for(n, scope);
    case NodeKind::kSet:
      return eval_set(n, scope);
    case NodeKind::kMacro:
      return define_macro(n, scope);
    case NodeKind::kFilterBlock: {
      const Value text = Value::from(block(n.body, scope));
      return apply_filter(n.name, text, eval_arguments(n.a, scope), scope);
    }
    case NodeKind::kBreak:
      throw BreakSignal{};
    case NodeKind::kContinue:
      throw ContinueSignal{};
    case NodeKind::kSlice:
    case NodeKind::kKeywordArgument:
      break;
  }
  kind_error("misplaced expression");
}

Value Interpreter::eval_binary(const Node& n, Scope& scope) {
  const std::string& op = n.name;
  const Value left = eval(*n.a[0], scope);
  if (op == "and") {
    return left.truthy() ? eval(*n.a[1], scope) : left;
  }
  if (op == "or") {
    return left.truthy() ? left : eval(*n.a[1], scope);
  }
  const Value right = eval(*n.a[1], scope);
  if (op == "==") {
    return Value::from(loose_equal(left, right));
  }
  if (op == "!=") {
    return Value::from(!loose_equal(left, right));
  }
  const bool membership = op == "in" || op == "not in";
  if (left.is(Kind::kUndefined) || right.is(Kind::kUndefined)) {
    if (right.is(Kind::kUndefined) && membership) {
      return Value::from(op == "not in");
    }
    kind_error("cannot apply " + op + " to an undefined value");
  }
  if (left.is(Kind::kNone) || right.is(Kind::kNone)) {
    kind_error("cannot apply " + op + " to none");
  }
  if (op == "~") {
    return Value::from(left.to_js_string() + right.to_js_string());
  }
  if (op == "**" && (left.is_numeric() || left.is(Kind::kBool)) &&
      (right.is_numeric() || right.is(Kind::kBool))) {
    // Booleans are 0 and 1 here.
    const double a = js_to_number(left), b = js_to_number(right);
    if (a == 0 && b < 0) {
      kind_error("0 cannot be raised to a negative power");
    }
    const double r = std::pow(a, b);
    if (!std::isfinite(r)) {
      kind_error("exponentiation result is not a finite real number");
    }
    return left.is(Kind::kFloat) || right.is(Kind::kFloat) || b < 0
               ? Value::floating(r)
               : Value::integer(r);
  }
  if (left.is_numeric() && right.is_numeric()) {
    const double a = left.number, b = right.number;
    const bool fl = left.is(Kind::kFloat) || right.is(Kind::kFloat);
    const auto number = [fl](double r) {
      return fl ? Value::floating(r) : Value::integer(r);
    };
    if (op == "+")
      return number(a + b);
    if (op == "-")
      return number(a - b);
    if (op == "*")
      return number(a * b);
    if (op == "/")
      return Value::floating(a / b);
    if (op == "//")
      return number(std::floor(a / b));
    if (op == "%")
      return number(std::fmod(a, b));
    if (op == "<")
      return Value::from(a < b);
    if (op == ">")
      return Value::from(a > b);
    if (op == "<=")
      return Value::from(a <= b);
    if (op == ">=")
      return Value::from(a >= b);
  } else if (left.is(Kind::kArray) && right.is(Kind::kArray)) {
    // Lists add; a list is never looked for in a list (the reference
    // raises there).
    if (op == "+") {
      Array out = *left.array;
      out.insert(out.end(), right.array->begin(), right.array->end());
      return Value::from(std::move(out));
    }
  } else if (right.is(Kind::kArray) && membership) {
    bool found = false;
    for (const Value& x : *right.array) {
      found = found || strict_equal(x, left);
    }
    return Value::from(found == (op == "in"));
  }
  if (op == "+" && (left.is(Kind::kString) || right.is(Kind::kString))) {
    return Value::from(left.to_js_string() + right.to_js_string());
  }
  if (membership && left.is(Kind::kString) && right.is(Kind::kString)) {
    const bool found = right.string.find(left.string) != std::string::npos;
    return Value::from(found == (op == "in"));
  }
  if (membership && left.is(Kind::kString) && right.is(Kind::kObject)) {
    const bool found = right.object->find(left.string) != nullptr;
    return Value::from(found == (op == "in"));
  }
  kind_error(
      "unsupported operator " + op + " between a " + kind_name(left.kind) +
      " and a " + kind_name(right.kind));
}

Value Interpreter::eval_member(const Node& n, Scope& scope) {
  const Value object = eval(*n.a[0], scope);
  const Node& prop = *n.a[1];
  if (n.computed && prop.kind == NodeKind::kSlice) {
    const Value start = prop.a[0] ? eval(*prop.a[0], scope) : Value();
    const Value stop = prop.a[1] ? eval(*prop.a[1], scope) : Value();
    const Value step = prop.a[2] ? eval(*prop.a[2], scope) : Value();
    if (object.is(Kind::kArray)) {
      Array out;
      for (size_t i : slice_indices(
               static_cast<int64_t>(object.array->size()), start, stop, step)) {
        out.push_back((*object.array)[i]);
      }
      return Value::from(std::move(out));
    }
    if (object.is(Kind::kString)) {
      const auto cps = code_points(object.string);
      std::string out;
      for (size_t i :
           slice_indices(static_cast<int64_t>(cps.size()), start, stop, step)) {
        out += cps[i];
      }
      return Value::from(out);
    }
    kind_error(std::string("cannot slice a ") + kind_name(object.kind));
  }
  Value key;
  if (n.computed) {
    key = eval(prop, scope);
  } else if (prop.kind == NodeKind::kInteger) {
    key = Value::integer(prop.number);
  } else {
    key = Value::from(prop.name);
  }
  if (object.is_mapping()) {
    if (!key.is(Kind::kString)) {
      kind_error(
          std::string("a mapping's key must be a string, got a ") +
          kind_name(key.kind));
    }
    if (const Value* v = object.object->find(key.string)) {
      return *v;
    }
    return object.is(Kind::kObject) ? builtin_member(object, key.string)
                                    : Value();
  }
  if (object.is(Kind::kArray) || object.is(Kind::kString)) {
    if (key.is(Kind::kInteger)) {
      // Array.prototype.at: negative indices count from the end.
      if (object.is(Kind::kArray)) {
        const auto size = static_cast<int64_t>(object.array->size());
        int64_t i = static_cast<int64_t>(key.number);
        i = i < 0 ? i + size : i;
        return i >= 0 && i < size ? (*object.array)[i] : Value();
      }
      const auto cps = code_points(object.string);
      const auto size = static_cast<int64_t>(cps.size());
      int64_t i = static_cast<int64_t>(key.number);
      i = i < 0 ? i + size : i;
      return i >= 0 && i < size ? Value::from(cps[i]) : Value();
    }
    if (key.is(Kind::kString)) {
      return builtin_member(object, key.string);
    }
    kind_error(
        std::string("cannot index a ") + kind_name(object.kind) + " with a " +
        kind_name(key.kind));
  }
  if (!key.is(Kind::kString)) {
    kind_error(
        std::string("cannot index a ") + kind_name(object.kind) + " with a " +
        kind_name(key.kind));
  }
  return Value();
}

Value Interpreter::eval_call(const Node& n, Scope& scope) {
  Arguments args = eval_arguments(n.body, scope);
  const Value fn = eval(*n.a[0], scope);
  if (!fn.is(Kind::kFunction)) {
    kind_error(std::string("cannot call a ") + kind_name(fn.kind));
  }
  return (*fn.function)(args, scope);
}

Value Interpreter::eval_filter(const Node& n, Scope& scope) {
  const Value v = eval(*n.a[0], scope);
  const Arguments args = eval_arguments(n.body, scope);
  return apply_filter(n.name, v, args, scope);
}

Value Interpreter::eval_for(const Node& n, Scope& scope) {
  Scope loop_scope(&scope);
  const Node* iterable_node = n.a[1].get();
  const Node* condition = nullptr;
  if (iterable_node->kind == NodeKind::kSelect) {
    condition = iterable_node->a[1].get();
    iterable_node = iterable_node->a[0].get();
  }
  Value iterable = eval(*iterable_node, loop_scope);
  if (iterable.is(Kind::kObject)) {
    Array keys;
    for (const auto& [k, v] : iterable.object->items) {
      keys.push_back(Value::from(k));
    }
    iterable = Value::from(std::move(keys));
  }
  if (!iterable.is(Kind::kArray)) {
    kind_error(std::string("cannot loop over a ") + kind_name(iterable.kind));
  }
  const Node& target = *n.a[0];
  const auto bind = [&](Scope& s, const Value& item) {
    if (target.kind == NodeKind::kIdentifier) {
      s.set(target.name, item);
      return;
    }
    if (!item.is(Kind::kArray)) {
      kind_error(std::string("cannot unpack a ") + kind_name(item.kind));
    }
    if (item.array->size() != target.a.size()) {
      kind_error(
          std::string("too ") +
          (target.a.size() > item.array->size() ? "few" : "many") +
          " items to unpack");
    }
    for (size_t j = 0; j < target.a.size(); ++j) {
      if (target.a[j]->kind != NodeKind::kIdentifier) {
        kind_error("a loop target must be names");
      }
      s.set(target.a[j]->name, (*item.array)[j]);
    }
  };
  Array items;
  for (const Value& item : *iterable.array) {
    if (condition != nullptr) {
      Scope test_scope(&loop_scope);
      bind(test_scope, item);
      if (!eval(*condition, test_scope).truthy()) {
        continue;
      }
    }
    items.push_back(item);
  }
  std::string out;
  bool no_iteration = true;
  const auto count = static_cast<double>(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const auto k = static_cast<double>(i);
    Object loop;
    loop.set("index", Value::integer(k + 1));
    loop.set("index0", Value::integer(k));
    loop.set("revindex", Value::integer(count - k));
    loop.set("revindex0", Value::integer(count - k - 1));
    loop.set("first", Value::from(i == 0));
    loop.set("last", Value::from(i + 1 == items.size()));
    loop.set("length", Value::integer(count));
    loop.set("previtem", i > 0 ? items[i - 1] : Value());
    loop.set("nextitem", i + 1 < items.size() ? items[i + 1] : Value());
    loop_scope.set("loop", Value::from(std::move(loop)));
    bind(loop_scope, items[i]);
    try {
      out += block(n.body, loop_scope);
    } catch (const ContinueSignal&) {
      continue;
    } catch (const BreakSignal&) {
      break;
    }
    no_iteration = false;
  }
  if (no_iteration) {
    out += block(n.orelse, loop_scope);
  }
  return Value::from(out);
}

Value Interpreter::eval_set(const Node& n, Scope& scope) {
  const Value rhs =
      n.a[1] ? eval(*n.a[1], scope) : Value::from(block(n.body, scope));
  const Node& target = *n.a[0];
  if (target.kind == NodeKind::kIdentifier) {
    scope.set(target.name, rhs);
  } else if (target.kind == NodeKind::kTuple) {
    if (!rhs.is(Kind::kArray)) {
      kind_error(std::string("cannot unpack a ") + kind_name(rhs.kind));
    }
    if (rhs.array->size() != target.a.size()) {
      kind_error(
          std::string("too ") +
          (target.a.size() > rhs.array->size() ? "few" : "many") +
          " items to unpack in set");
    }
    for (size_t i = 0; i < target.a.size(); ++i) {
      if (target.a[i]->kind != NodeKind::kIdentifier) {
        kind_error("set can unpack to names only");
      }
      scope.set(target.a[i]->name, (*rhs.array)[i]);
    }
  } else {
    const Value object = eval(*target.a[0], scope);
    if (!object.is(Kind::kNamespace)) {
      kind_error(
          "cannot assign an attribute of a " +
          std::string(kind_name(object.kind)) + " (only of a namespace)");
    }
    object.object->set(target.a[1]->name, rhs);
  }
  return Value::none();
}

Value Interpreter::define_macro(const Node& n, Scope& scope) {
  const Node* macro = &n;
  Interpreter* self = this;
  scope.set(
      n.name,
      Value::from(Function(
          [macro, self](const Arguments& args, Scope& caller) -> Value {
            Scope s(&caller);
            std::vector<const Node*> defaults;
            Object keywords = args.keyword;
            for (size_t i = 0; i < macro->a.size(); ++i) {
              const Node& p = *macro->a[i];
              const Value* v =
                  i < args.positional.size() ? &args.positional[i] : nullptr;
              Value bound;
              if (v == nullptr) {
                auto it = std::find_if(
                    keywords.items.begin(), keywords.items.end(),
                    [&](const auto& kv) { return kv.first == p.name; });
                if (it != keywords.items.end()) {
                  bound = it->second;
                  keywords.items.erase(it);
                } else if (p.kind == NodeKind::kKeywordArgument) {
                  defaults.push_back(&p);
                }
              } else {
                bound = *v;
              }
              s.set(p.name, bound);
            }
            if (!keywords.items.empty()) {
              kind_error(
                  "macro '" + macro->name + "' takes no keyword argument '" +
                  keywords.items.front().first + "'");
            }
            if (args.positional.size() > macro->a.size()) {
              kind_error(
                  "macro '" + macro->name + "' takes at most " +
                  std::to_string(macro->a.size()) + " arguments");
            }
            for (const Node* p : defaults) {
              s.set(p->name, self->eval(*p->a[0], s));
            }
            return Value::from(self->block(macro->body, s));
          })));
  return Value::none();
}

} // namespace

std::string render(const NodeList& program, Scope& scope) {
  Interpreter interpreter;
  try {
    return interpreter.block(program, scope);
  } catch (const BreakSignal&) {
    TORCH_CHECK_TYPE(
        false, "torchtp::ChatTemplate: {% break %} outside a loop");
  } catch (const ContinueSignal&) {
    TORCH_CHECK_TYPE(
        false, "torchtp::ChatTemplate: {% continue %} outside a loop");
  }
}

} // namespace torchtp::chat
