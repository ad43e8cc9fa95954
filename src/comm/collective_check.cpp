#include "collective_check.h"

#include "detail/check.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchtp::detail {
namespace {

const char* reduce_name(int32_t op) {
  switch (static_cast<ReduceOp>(op)) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

// The end of every message of this check: what each depth compared
// ("sizes", "shapes") is what must be the same.
std::string same_collectives_rule(const char* compared) {
  return std::string(
             "Every rank of a group must make the same collectives in the "
             "same order with the same ") +
         compared;
}

} // namespace

const char* op_name(uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::join:
      return "join";
    case Op::barrier:
      return "barrier";
    case Op::all_reduce:
      return "all_reduce";
    case Op::all_gather:
      return "all_gather";
    case Op::reduce_scatter:
      return "reduce_scatter";
    case Op::broadcast:
      return "broadcast";
  }
  return "unknown";
}

std::string Signature::describe() const {
  std::ostringstream s;
  s << op_name(op);
  if (op != static_cast<uint32_t>(Op::barrier) &&
      op != static_cast<uint32_t>(Op::join)) {
    s << " of " << bytes << " bytes of "
      << c10::toString(static_cast<c10::ScalarType>(dtype));
  }
  if (reduce >= 0) {
    s << " (" << reduce_name(reduce) << ")";
  }
  if (root >= 0) {
    s << " from root " << root;
  }
  return s.str();
}

std::string Signature::mismatch(int other_rank, const Signature& theirs) const {
  return "ranks called different collectives: this rank called " +
         describe() + ", rank " + std::to_string(other_rank) + " called " +
         theirs.describe() + ". " + same_collectives_rule("sizes");
}

namespace {

// TORCHTP_DEBUG's fingerprint of a collective, exchanged before it runs:
// the collective's sequence number on its group, the operation (its name,
// so any operation the Group adds is carried verbatim), its argument
// (reduction, dim or root), the dtype and the shape. Fixed length, so that
// ranks that disagree still exchange it without a mismatch of their own.
constexpr int64_t kMaxSignatureDims = 16;
constexpr int64_t kOpNameWords = 4; // 32 characters
enum Field : int64_t {
  kSeq,
  kOpName,
  kArg = kOpName + kOpNameWords,
  kDtype,
  kDims,
  kSizes
};
constexpr int64_t kFingerprintLength = kSizes + kMaxSignatureDims;

// The next sequence number of the group named `name` (names are unique for
// the life of the job, and every member numbers its checked collectives in
// the same order).
int64_t next_sequence(const std::string& name) {
  static std::mutex mutex;
  static std::unordered_map<std::string, int64_t> next;
  std::lock_guard<std::mutex> lock(mutex);
  return next[name]++;
}

std::string op_name_of(const int64_t* f) {
  char name[kOpNameWords * sizeof(int64_t) + 1] = {};
  std::memcpy(name, f + kOpName, kOpNameWords * sizeof(int64_t));
  return name;
}

// "#3 all_gather(dim 1) of [2, 3] Float".
std::string describe_fingerprint(const int64_t* f) {
  std::ostringstream out;
  const std::string op = op_name_of(f);
  out << "#" << f[kSeq] << " " << op;
  if (f[kArg] >= 0) {
    if (op == op_name(static_cast<uint32_t>(Op::all_reduce))) {
      out << "(" << reduce_name(int32_t(f[kArg])) << ")";
    } else if (op == op_name(static_cast<uint32_t>(Op::broadcast))) {
      out << "(root " << f[kArg] << ")";
    } else {
      out << "(dim " << f[kArg] << ")";
    }
  }
  if (f[kDims] >= 0) {
    out << " of [";
    for (int64_t d = 0; d < f[kDims]; ++d) {
      out << (d ? ", " : "") << f[kSizes + d];
    }
    out << "] " << c10::toString(static_cast<c10::ScalarType>(f[kDtype]));
  }
  return out.str();
}

} // namespace

void check_fingerprints(
    Communicator& comm, const char* op, const at::Tensor* t, int64_t arg) {
  const std::string where = std::string("torchtp::Group::") + op;
  TORCHTP_CHECK(
      t == nullptr || t->dim() <= kMaxSignatureDims, where, comm,
      "TORCHTP_DEBUG checks at most ", kMaxSignatureDims, " dims");
  auto mine = at::full({kFingerprintLength}, -1, at::kLong);
  auto* f = mine.data_ptr<int64_t>();
  f[kSeq] = next_sequence(comm.name());
  std::memset(f + kOpName, 0, kOpNameWords * sizeof(int64_t));
  std::strncpy(
      reinterpret_cast<char*>(f + kOpName), op,
      kOpNameWords * sizeof(int64_t) - 1);
  f[kArg] = arg;
  if (t != nullptr) {
    f[kDtype] = static_cast<int64_t>(t->scalar_type());
    f[kDims] = t->dim();
    for (int64_t d = 0; d < t->dim(); ++d) {
      f[kSizes + d] = t->size(d);
    }
  }
  auto all = at::empty({comm.size() * kFingerprintLength}, at::kLong);
  comm.all_gather(mine, all).wait();
  const auto* a = all.data_ptr<int64_t>();
  bool agree = true;
  for (int r = 0; r < comm.size() && agree; ++r) {
    agree = std::equal(f, f + kFingerprintLength, a + r * kFingerprintLength);
  }
  if (agree) {
    return;
  }
  // Ranks that called the same thing are named together.
  std::vector<std::pair<std::string, std::vector<int>>> calls;
  for (int r = 0; r < comm.size(); ++r) {
    const auto what = describe_fingerprint(a + r * kFingerprintLength);
    auto it = std::find_if(calls.begin(), calls.end(), [&](const auto& c) {
      return c.first == what;
    });
    if (it == calls.end()) {
      calls.push_back({what, {r}});
    } else {
      it->second.push_back(r);
    }
  }
  std::ostringstream who;
  for (size_t i = 0; i < calls.size(); ++i) {
    const auto& ranks = calls[i].second;
    who << (i ? "; " : "") << (ranks.size() > 1 ? "ranks " : "rank ");
    for (size_t j = 0; j < ranks.size(); ++j) {
      who << (j ? ", " : "") << ranks[j];
    }
    who << " called " << calls[i].first;
  }
  TORCHTP_CHECK(
      false, where, comm, "ranks disagree on collective #", f[kSeq],
      " of group '", comm.name(), "' (TORCHTP_DEBUG): ", who.str(), ". ",
      same_collectives_rule("shapes"), "; this rank called ",
      describe_fingerprint(f));
}

} // namespace torchtp::detail
