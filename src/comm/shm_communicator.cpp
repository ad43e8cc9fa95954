#include "connector.h"
#include "job_failure.h"
#include "reduce_kernels.h"
#include "collective_check.h"
#include "detail/check.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <fcntl.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

// How the ranks of one host talk.
//
// The group's members map one segment: a header, one control line per rank
// and two data slots per rank. A collective is a series of epochs; epoch e
// uses every rank's slot e % 2. In each epoch a rank writes its own slot,
// publishes its progress (a stamp counter that only grows), and waits until
// every member's stamp has caught up; only then does it read the others'
// slots. Before a rank writes slot e % 2 again, in epoch e + 2, every member
// has stamped epoch e + 1, which it does only after its reads of epoch e: two
// slots are enough, and no rank ever waits for more than the slowest member.
//
// The first epoch of each collective carries its signature (operation,
// dtype, reduction, root, byte count) next to the stamp; every rank compares
// all signatures before it reads any data, so ranks that call different
// collectives all raise, and nothing is corrupted.
//
// Waiting spins briefly (the peer is usually microseconds away), then yields,
// then sleeps on a futex in the segment, woken by the next stamp. While it
// sleeps it checks, a few times a second, that the ranks it waits for are
// alive, have not left the group, and that no member has failed, and it
// gives up at the group's timeout. A rank that reports a failure
// (torchtp::report_failure) poisons the segment: every member's pending and
// next collective raise at once, quoting the job's first failure.
//
// The segment is a memfd: it has no name, so a job that is killed leaves
// nothing behind in /dev/shm; the other members open it through /proc.

namespace torchtp::detail {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kMagic = 0x70746863726f74ULL; // "torchtp"
constexpr size_t kLine = 128; // two cache lines: no false sharing
constexpr size_t kPage = 4096;
// Sizes up to this go in one epoch that every rank reduces whole (one
// synchronisation); above, each rank reduces its block and the others copy
// it (reduce-scatter then all-gather), which moves less memory.
constexpr int64_t kOneShotBytes = 128 << 10;
constexpr int64_t kDefaultSlotBytes = 1 << 20;
constexpr auto kSpinFor = std::chrono::microseconds(50);
constexpr auto kYieldFor = std::chrono::microseconds(500);
constexpr auto kSleepSlice = std::chrono::milliseconds(20);
constexpr auto kLivenessEvery = std::chrono::milliseconds(100);
const std::string kJoinErrorKey = "shm/join_error";

struct alignas(kLine) RankControl {
  std::atomic<uint64_t> stamp;
  std::atomic<int32_t> pid;
  std::atomic<uint32_t> departed;
  Signature signature[2]; // by epoch parity
};

struct alignas(kLine) SegmentHeader {
  uint64_t magic;
  uint64_t slot_bytes;
  int32_t ranks;
  alignas(kLine) std::atomic<uint32_t> wake; // futex word, bumped per stamp
  std::atomic<uint32_t> sleepers;
  alignas(kLine) std::atomic<int32_t> failure_claim; // -1 until one fails
  std::atomic<int32_t> failed_rank;                  // set once text is in
  std::atomic<uint32_t> aborted; // the failure is the job's first, reported
  char failure[2048];
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

std::string seconds(std::chrono::milliseconds t) {
  std::ostringstream s;
  s << t.count() / 1000.0 << " s";
  return s.str();
}

size_t round_up(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

size_t control_bytes(int ranks) {
  return round_up(sizeof(SegmentHeader) + ranks * sizeof(RankControl), kPage);
}

int64_t slot_bytes_from_env() {
  const char* v = std::getenv("TORCHTP_SHM_SLOT_BYTES");
  if (v == nullptr || *v == '\0') {
    return kDefaultSlotBytes;
  }
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK(
      end != v && *end == '\0' && n >= 256 && n % 64 == 0,
      "torchtp: TORCHTP_SHM_SLOT_BYTES='", v,
      "' must be a multiple of 64 of at least 256");
  return n;
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  timespec ts{};
  ts.tv_nsec =
      std::chrono::duration_cast<std::chrono::nanoseconds>(kSleepSlice).count();
  syscall(
      SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts,
      nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(
      SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX,
      nullptr, nullptr, 0);
}

// A process that exited but was not reaped yet still answers kill(pid, 0).
bool process_alive(int32_t pid) {
  if (pid <= 0) {
    return true; // not joined yet: nothing to tell
  }
  if (kill(pid, 0) != 0 && errno == ESRCH) {
    return false;
  }
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) {
    return true;
  }
  const auto close = line.rfind(')');
  const char state = close != std::string::npos && close + 2 < line.size()
                         ? line[close + 2]
                         : '?';
  return state != 'Z' && state != 'X';
}

class ShmCommunicator final : public ConnectedCommunicator {
 public:
  ShmCommunicator(
      std::shared_ptr<Connector> connector,
      std::vector<int> world_ranks,
      std::string name)
      : ConnectedCommunicator(
            std::move(connector), std::move(world_ranks), std::move(name)) {
    try {
      map_segment();
      const Signature join = Signature::of(Op::join);
      run(join, [&] {
        begin_epoch(&join);
        sync_first(join);
      });
      close(memfd_); // rank 0's: every member has it mapped now
      memfd_ = -1;
    } catch (const std::exception& e) {
      // Tell the members still waiting to join, then free what was taken:
      // no destructor runs for a constructor that throws.
      report_join_error(e.what());
      release();
      throw;
    }
  }

  ~ShmCommunicator() override {
    if (base_ == nullptr) {
      return;
    }
    // Peers still waiting on this rank fail at once instead of timing out.
    me().departed.store(1, std::memory_order_seq_cst);
    header().wake.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&header().wake);
    release();
  }

  std::string backend() const override {
    return "shm";
  }

  // Lock-free: the collective that waits holds mutex_, and may be on
  // another thread than the one reporting.
  void abort(const std::string& reason) override {
    if (base_ != nullptr) {
      publish_failure(reason, /*aborted=*/true);
    }
  }

  Work all_reduce(at::Tensor& tensor, ReduceOp op) override {
    const auto dtype = tensor.scalar_type();
    const int64_t es = tensor.element_size();
    const int64_t count = tensor.numel();
    auto* data = static_cast<char*>(tensor.data_ptr());
    const Signature sig = Signature::of(Op::all_reduce, dtype, count * es, op);
    run(sig, [&] {
      if (count * es <= std::min(kOneShotBytes, slot_bytes_)) {
        one_shot_all_reduce(sig, data, count, es, dtype, op);
        return;
      }
      // Each epoch carries one chunk; rank j reduces block j of it. Blocks
      // are whole multiples of 64 bytes so each rank's writes own their
      // cache lines.
      const int64_t chunk = slot_bytes_ / es;
      const int64_t align = std::max<int64_t>(1, 64 / es);
      for (int64_t off = 0; off < count; off += chunk) {
        const int64_t len = std::min(chunk, count - off);
        const int64_t block =
            round_up((len + size_ - 1) / size_, align);
        auto range = [&](int j) {
          const int64_t b = std::min(len, j * block);
          return std::make_pair(b, std::min(len, b + block) - b);
        };
        begin_epoch(off == 0 ? &sig : nullptr);
        char* mine = slot(rank_);
        char* chunk_data = data + off * es;
        for (int j = 0; j < size_; ++j) {
          if (j != rank_) {
            auto [b, n] = range(j);
            std::memcpy(mine + b * es, chunk_data + b * es, n * es);
          }
        }
        off == 0 ? sync_first(sig) : sync();
        auto [rb, rn] = range(rank_);
        for (int j = 0; j < size_; ++j) {
          inputs_[j] = j == rank_ ? chunk_data + rb * es : slot(j) + rb * es;
        }
        reduce_buffers(mine + rb * es, inputs_.data(), size_, rn, dtype, op);
        sync();
        for (int j = 0; j < size_; ++j) {
          auto [b, n] = range(j);
          std::memcpy(chunk_data + b * es, slot(j) + b * es, n * es);
        }
      }
    });
    return Work(tensor);
  }

  Work all_gather(const at::Tensor& input, at::Tensor& output) override {
    const int64_t bytes = input.nbytes();
    const auto* in = static_cast<const char*>(input.data_ptr());
    auto* out = static_cast<char*>(output.data_ptr());
    const Signature sig =
        Signature::of(Op::all_gather, input.scalar_type(), bytes);
    run(sig, [&] {
      for_each_chunk(bytes, slot_bytes_, sig, [&](int64_t off, int64_t len) {
        std::memcpy(slot(rank_), in + off, len);
        return [=] {
          for (int j = 0; j < size_; ++j) {
            std::memcpy(
                out + j * bytes + off, j == rank_ ? in + off : slot(j), len);
          }
        };
      });
    });
    return Work(output);
  }

  Work reduce_scatter(
      const at::Tensor& input, at::Tensor& output, ReduceOp op) override {
    const auto dtype = input.scalar_type();
    const int64_t es = input.element_size();
    const int64_t count = output.numel(); // per block
    const auto* in = static_cast<const char*>(input.data_ptr());
    auto* out = static_cast<char*>(output.data_ptr());
    const Signature sig =
        Signature::of(Op::reduce_scatter, dtype, input.nbytes(), op);
    // An epoch carries, for every rank j, a piece of this rank's block j.
    const int64_t align = std::max<int64_t>(1, 64 / es);
    const int64_t piece =
        std::max<int64_t>(align, slot_bytes_ / size_ / es / align * align);
    run(sig, [&] {
      for_each_chunk(count, piece, sig, [&](int64_t off, int64_t len) {
        char* mine = slot(rank_);
        for (int j = 0; j < size_; ++j) {
          if (j != rank_) {
            std::memcpy(
                mine + j * piece * es, in + (j * count + off) * es, len * es);
          }
        }
        return [=] {
          for (int j = 0; j < size_; ++j) {
            inputs_[j] = j == rank_ ? in + (rank_ * count + off) * es
                                    : slot(j) + rank_ * piece * es;
          }
          reduce_buffers(
              out + off * es, inputs_.data(), size_, len, dtype, op);
        };
      });
    });
    return Work(output);
  }

  Work broadcast(at::Tensor& tensor, int root) override {
    const int64_t bytes = tensor.nbytes();
    auto* data = static_cast<char*>(tensor.data_ptr());
    const Signature sig = Signature::of(
        Op::broadcast, tensor.scalar_type(), bytes, c10::nullopt, root);
    run(sig, [&] {
      for_each_chunk(bytes, slot_bytes_, sig, [&](int64_t off, int64_t len) {
        if (rank_ == root) {
          std::memcpy(slot(rank_), data + off, len);
        }
        return [=] {
          if (rank_ != root) {
            std::memcpy(data + off, slot(root), len);
          }
        };
      });
    });
    return Work(tensor);
  }

  Work barrier() override {
    const Signature sig = Signature::of(Op::barrier);
    run(sig, [&] {
      begin_epoch(&sig);
      sync_first(sig);
    });
    return Work();
  }

 private:
  // --- the segment --------------------------------------------------------

  void release() {
    if (base_ != nullptr) {
      munmap(base_, bytes_);
      base_ = nullptr;
    }
    if (memfd_ >= 0) {
      close(memfd_);
      memfd_ = -1;
    }
  }

  // A member that cannot join says why through the store, where the others
  // look while they wait for it: they fail with its reason, not a timeout.
  void report_join_error(const std::string& what) {
    try {
      store_set(*store_, kJoinErrorKey, rank_label(rank_, size_) + " " + what);
    } catch (const std::exception&) {
      // The store is gone too: the others time out.
    }
  }

  void map_segment() {
    slot_bytes_ = slot_bytes_from_env();
    bytes_ = control_bytes(size_) + size_ * 2 * slot_bytes_;
    store_ = c10::make_intrusive<c10d::PrefixStore>(name(), connector_->store());
    auto& store = *store_;
    const std::string key = "shm/segment";
    TORCH_CHECK(
        slot_bytes_ >= 64 * size_, prefix("connect"),
        "TORCHTP_SHM_SLOT_BYTES (", slot_bytes_, ") must be at least 64 bytes "
        "per rank (", 64 * size_, ")");
    int fd = -1;
    if (rank_ == 0) {
      // The name only labels /proc/<pid>/fd: the segment has no file.
      const std::string label = "torchtp-" + name();
      fd = memfd_create(label.c_str(), MFD_CLOEXEC);
      TORCH_CHECK(
          fd >= 0, prefix("connect"), "memfd_create failed: ",
          std::strerror(errno));
      // Reserve the pages now: a full tmpfs then fails here, not later with
      // SIGBUS in the middle of a collective.
      const int err = ftruncate(fd, bytes_) == 0
                          ? posix_fallocate(fd, 0, bytes_)
                          : errno;
      if (err != 0) {
        close(fd);
        TORCH_CHECK(
            false, prefix("connect"), "cannot reserve ", bytes_,
            " bytes of shared memory: ", std::strerror(err),
            " (set TORCHTP_BACKEND=gloo to do without)");
      }
      map(fd);
      // Kept open until every member has opened it (the join epoch).
      memfd_ = fd;
      auto& h = header();
      h.magic = kMagic;
      h.slot_bytes = slot_bytes_;
      h.ranks = size_;
      h.failure_claim.store(-1);
      h.failed_rank.store(-1);
      h.aborted.store(0);
      store_set(store, key, std::to_string(getpid()) + " " + std::to_string(fd));
    } else {
      std::string where;
      try {
        where = store_get(store, key);
      } catch (const std::exception& e) {
        TORCH_CHECK(
            false, prefix("connect"),
            "rank 0 of the group never published its segment: ", e.what());
      }
      std::istringstream parse(where);
      int pid = 0, remote_fd = -1;
      parse >> pid >> remote_fd;
      const std::string path =
          "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(remote_fd);
      fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
      TORCH_CHECK(
          fd >= 0, prefix("connect"), "cannot open rank 0's segment ", path,
          ": ", std::strerror(errno),
          " (ranks must run as one user on one host; set "
          "TORCHTP_BACKEND=gloo to do without)");
      struct stat st {};
      if (fstat(fd, &st) != 0 || st.st_size != static_cast<off_t>(bytes_)) {
        close(fd);
        TORCH_CHECK(
            false, prefix("connect"), "rank 0's segment has ",
            static_cast<int64_t>(st.st_size), " bytes, expected ", bytes_,
            " (is TORCHTP_SHM_SLOT_BYTES the same on every rank?)");
      }
      map(fd);
      close(fd);
      fd = -1;
      TORCH_CHECK(
          header().magic == kMagic && header().ranks == size_,
          prefix("connect"), "rank 0's segment is not this group's");
    }
    me().pid.store(getpid(), std::memory_order_seq_cst);
    inputs_.resize(size_);
  }

  void map(int fd) {
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      close(fd);
      TORCH_CHECK(
          false, prefix("connect"), "mmap of ", bytes_,
          " bytes failed: ", std::strerror(err));
    }
    base_ = static_cast<char*>(p);
  }

  SegmentHeader& header() const {
    return *reinterpret_cast<SegmentHeader*>(base_);
  }
  RankControl& control(int j) const {
    return reinterpret_cast<RankControl*>(base_ + sizeof(SegmentHeader))[j];
  }
  RankControl& me() const {
    return control(rank_);
  }
  char* slot(int j) const {
    return base_ + control_bytes(size_) + (2 * j + parity_) * slot_bytes_;
  }

  // --- epochs and waiting ---------------------------------------------------

  // Starts an epoch: selects its slots and, for a collective's first
  // epoch, publishes what this rank is about to do.
  void begin_epoch(const Signature* sig) {
    parity_ = epoch_++ & 1;
    if (sig != nullptr) {
      me().signature[parity_] = *sig;
    }
  }

  // Publishes that this rank reached the next phase and waits for all.
  void sync() {
    ++stamp_;
    me().stamp.store(stamp_, std::memory_order_seq_cst);
    if (header().sleepers.load(std::memory_order_seq_cst) != 0) {
      header().wake.fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&header().wake);
    }
    for (int j = 0; j < size_; ++j) {
      if (j != rank_) {
        wait_for(j);
      }
    }
  }

  // The first sync of a collective: afterwards every member's signature is
  // in place; all compare them, so on a mismatch every rank raises.
  void sync_first(const Signature& mine) {
    sync();
    for (int j = 0; j < size_; ++j) {
      const Signature theirs = control(j).signature[parity_];
      TORCH_CHECK(
          theirs == mine, prefix(op_name(mine.op)), mine.mismatch(j, theirs));
    }
  }

  // Chunks [0, total) by `chunk`; `write(off, len)` fills this rank's slot
  // and returns what to do once every member has written theirs. One epoch
  // per chunk, at least one (an empty collective still synchronises).
  template <typename Write>
  void for_each_chunk(
      int64_t total, int64_t chunk, const Signature& sig, Write&& write) {
    int64_t off = 0;
    do {
      const int64_t len = std::min(chunk, total - off);
      begin_epoch(off == 0 ? &sig : nullptr);
      auto read = write(off, len);
      off == 0 ? sync_first(sig) : sync();
      read();
      off += len;
    } while (off < total);
  }

  void one_shot_all_reduce(
      const Signature& sig,
      char* data,
      int64_t count,
      int64_t es,
      c10::ScalarType dtype,
      ReduceOp op) {
    begin_epoch(&sig);
    std::memcpy(slot(rank_), data, count * es);
    sync_first(sig);
    for (int j = 0; j < size_; ++j) {
      inputs_[j] = j == rank_ ? data : slot(j);
    }
    reduce_buffers(data, inputs_.data(), size_, count, dtype, op);
  }

  bool reached(int j, std::memory_order order = std::memory_order_acquire)
      const {
    return control(j).stamp.load(order) >= stamp_;
  }

  void wait_for(int j) {
    if (reached(j)) {
      return;
    }
    const auto spin_until = Clock::now() + kSpinFor;
    do {
      for (int i = 0; i < 64; ++i) {
        _mm_pause();
        if (reached(j)) {
          return;
        }
      }
    } while (Clock::now() < spin_until);
    // With more ranks than cores the peer may need this core: yield it.
    const auto yield_until = Clock::now() + kYieldFor;
    while (Clock::now() < yield_until) {
      sched_yield();
      if (reached(j)) {
        return;
      }
    }
    sleep_until_reached(j);
  }

  void sleep_until_reached(int j) {
    auto& h = header();
    auto next_liveness = Clock::now();
    while (true) {
      h.sleepers.fetch_add(1, std::memory_order_seq_cst);
      const uint32_t seen = h.wake.load(std::memory_order_seq_cst);
      // seq_cst: ordered after our sleepers increment, as the waker's
      // stamp store is before its sleepers load.
      if (reached(j, std::memory_order_seq_cst)) {
        h.sleepers.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
      futex_wait(&h.wake, seen);
      h.sleepers.fetch_sub(1, std::memory_order_seq_cst);
      if (reached(j)) {
        return;
      }
      check_peer(j, next_liveness);
    }
  }

  // Raises when rank j will not arrive: the group failed elsewhere, j left
  // or exited, or the collective ran past the timeout.
  void check_peer(int j, Clock::time_point& next_liveness) {
    raise_if_group_failed();
    const auto& peer = control(j);
    if (peer.departed.load(std::memory_order_acquire) != 0) {
      fail(
          "rank " + std::to_string(j) + " (world rank " +
          std::to_string(world_ranks_[j]) +
          ") left the group (its communicator was destroyed) while this rank "
          "waits for it");
    }
    const auto now = Clock::now();
    if (now >= next_liveness) {
      next_liveness = now + kLivenessEvery;
      if (std::strcmp(op_, "join") == 0 && store_->check({kJoinErrorKey})) {
        fail(
            "a member could not join: " + store_get(*store_, kJoinErrorKey),
            /*report=*/false);
      }
      const int32_t pid = peer.pid.load(std::memory_order_acquire);
      if (!process_alive(pid)) {
        fail(
            "rank " + std::to_string(j) + " (world rank " +
            std::to_string(world_ranks_[j]) + ", pid " + std::to_string(pid) +
            ") exited");
      }
    }
    if (now - op_start_ >= timeout_) {
      fail(
          "rank " + std::to_string(j) + " (world rank " +
          std::to_string(world_ranks_[j]) + ") did not join within the " +
          seconds(timeout_) + " timeout (TORCHTP_TIMEOUT_S); it may be stalled or busy "
          "elsewhere");
    }
  }

  // A member's failure (this rank's too, when it was a reported one: a
  // reported failure refuses every later collective) is this rank's.
  void raise_if_group_failed() {
    auto& h = header();
    const int32_t failed = h.failed_rank.load(std::memory_order_acquire);
    if (failed < 0) {
      return;
    }
    const std::string text(h.failure, strnlen(h.failure, sizeof(h.failure)));
    if (h.aborted.load(std::memory_order_acquire) != 0) {
      // The store holds it whole; the segment's copy may be cut.
      const std::string first = JobFailure::get().known(/*ask_store=*/true);
      fail(kFirstFailure + (first.empty() ? text : first), /*report=*/false);
    }
    if (failed != rank_) {
      fail(
          "rank " + std::to_string(failed) + " of the group failed: " + text,
          /*report=*/false);
    }
  }

  // First claim wins; the other members then fail at once.
  void publish_failure(const std::string& why, bool aborted) {
    auto& h = header();
    int32_t none = -1;
    if (h.failure_claim.compare_exchange_strong(none, rank_)) {
      std::strncpy(h.failure, why.c_str(), sizeof(h.failure) - 1);
      h.aborted.store(aborted ? 1 : 0, std::memory_order_relaxed);
      h.failed_rank.store(rank_, std::memory_order_release);
      h.wake.fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&h.wake);
    }
  }

  // The group cannot be used after this: a peer is gone or out of step.
  // `report` tells the other members, which then fail at once, and records
  // the failure as the job's first unless one is known (a rank that has
  // been told of an earlier failure only passes it on).
  [[noreturn]] void fail(const std::string& why, bool report = true) {
    broken_ = prefix(op_) + why;
    if (report) {
      publish_failure(why, /*aborted=*/false);
      JobFailure::get().record(
          "rank " + std::to_string(world_ranks_[rank_]) + " raised: " +
          broken_);
    }
    TORCH_CHECK(false, broken_);
  }

  std::string prefix(const char* op) const {
    return std::string("torchtp::Group::") + op + " failed " +
           rank_label(rank_, size_) + " (backend shm, group " + name() +
           ", timeout " + seconds(timeout_) + "): ";
  }

  // One collective, `body`, of signature `sig`: serialised, timed, and
  // refused once the group has failed.
  template <typename F>
  void run(const Signature& sig, F&& body) {
    std::lock_guard<std::mutex> lock(mutex_);
    op_ = op_name(sig.op);
    TORCH_CHECK(
        broken_.empty(), prefix(op_),
        "the group is unusable after an earlier failure: ", broken_);
    // One load: a reported failure stops this collective before it starts.
    if (header().failed_rank.load(std::memory_order_acquire) >= 0) {
      raise_if_group_failed();
    }
    op_start_ = Clock::now();
    body();
    // A member that gave up on this collective (timeout) may have stamped
    // before it did: its failure is this collective's too.
    raise_if_group_failed();
  }

  c10::intrusive_ptr<c10d::Store> store_; // keys of this group

  char* base_ = nullptr;
  size_t bytes_ = 0;
  int64_t slot_bytes_ = 0;
  int memfd_ = -1;

  std::mutex mutex_; // one collective at a time per communicator
  uint64_t epoch_ = 0;
  uint64_t stamp_ = 0;
  int parity_ = 0;
  std::vector<const void*> inputs_;
  const char* op_ = "connect";
  Clock::time_point op_start_;
  std::string broken_;
};

} // namespace

// A communicator over shared memory, for groups whose ranks are all on this
// host; registered in backends.cpp. Raises a `c10::Error` when a member
// cannot map the group's segment.
c10::intrusive_ptr<Communicator> make_shm_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name) {
  return c10::make_intrusive<ShmCommunicator>(connector, world_ranks, name);
}

} // namespace torchtp::detail
