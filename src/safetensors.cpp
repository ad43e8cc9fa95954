#include "torchtp/safetensors.h"

#include "detail/read_counter.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <zlib.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace torchtp {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;

const std::vector<std::pair<at::ScalarType, const char*>>& dtype_names() {
  static const std::vector<std::pair<at::ScalarType, const char*>> names = {
      {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kBFloat16, "BF16"},
      {at::kHalf, "F16"},   {at::kLong, "I64"},  {at::kInt, "I32"},
      {at::kShort, "I16"},  {at::kChar, "I8"},   {at::kByte, "U8"},
      {at::kBool, "BOOL"}};
  return names;
}

const char* dtype_to_name(at::ScalarType t) {
  for (const auto& [type, name] : dtype_names()) {
    if (type == t) {
      return name;
    }
  }
  TORCH_CHECK(
      false, "torchtp::write_safetensors: dtype ", t,
      " has no safetensors name");
}

c10::optional<at::ScalarType> name_to_dtype(const std::string& n) {
  for (const auto& [type, name] : dtype_names()) {
    if (n == name) {
      return type;
    }
  }
  return c10::nullopt;
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    TORCH_CHECK(
        n > 0, "torchtp: cannot write ", path, ": ", std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
  }
}

std::atomic<uint64_t> bytes_read{0};

void read_all(
    int fd, void* data, size_t size, uint64_t offset, const std::string& path) {
  bytes_read += size;
  char* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    TORCH_CHECK(
        n > 0, "torchtp: ", path, " is truncated or unreadable at byte ",
        offset, n < 0 ? std::string(": ") + std::strerror(errno) : "");
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// safetensors stores little-endian data; so does every machine torchtp runs
// on today.
static_assert(
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
    "safetensors I/O assumes a little-endian host");

} // namespace

uint32_t tensor_crc32(const at::Tensor& tensor) {
  auto t = tensor.contiguous();
  const auto* bytes = static_cast<const Bytef*>(t.data_ptr());
  uint64_t left = t.nbytes();
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes at most 4 GiB per call.
  while (left > 0) {
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(left, 1u << 30));
    crc = crc32(crc, bytes, chunk);
    bytes += chunk;
    left -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

std::vector<uint32_t> write_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(
        tensor.device().is_cpu(), "torchtp::write_safetensors: ", name,
        " is not on the CPU");
    auto t = tensor.detach().contiguous();
    header[name] = {
        {"dtype", dtype_to_name(t.scalar_type())},
        {"shape", t.sizes().vec()},
        {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
    data.push_back(t);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' '); // align the data to 8 bytes
  const uint64_t n = text.size();

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TORCH_CHECK(
      fd >= 0, "torchtp: cannot create ", path, ": ", std::strerror(errno));
  std::vector<uint32_t> crcs;
  try {
    write_all(fd, &n, sizeof(n), path);
    write_all(fd, text.data(), text.size(), path);
    for (const auto& t : data) {
      write_all(fd, t.data_ptr(), t.nbytes(), path);
      crcs.push_back(tensor_crc32(t));
    }
    TORCH_CHECK(
        ::fsync(fd) == 0, "torchtp: cannot flush ", path, ": ",
        std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return crcs;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(
      fd_ >= 0, "torchtp: cannot open ", path, ": ", std::strerror(errno));
  try {
    struct stat st {};
    TORCH_CHECK(::fstat(fd_, &st) == 0, "torchtp: cannot stat ", path);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    TORCH_CHECK(
        size >= 8, "torchtp: ", path, " is not a safetensors file: ", size,
        " bytes, too short for a header");
    uint64_t n = 0;
    read_all(fd_, &n, sizeof(n), 0, path);
    TORCH_CHECK(
        n <= kMaxHeaderBytes && n <= size - 8, "torchtp: ", path,
        " is not a safetensors file or is truncated: its header "
        "claims ",
        n, " bytes, the file has ", size);
    std::string text(n, '\0');
    read_all(fd_, text.data(), n, 8, path);
    data_start_ = 8 + n;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(
          false, "torchtp: ", path, " has a malformed header: ", e.what());
    }
    TORCH_CHECK(
        header.is_object(), "torchtp: ", path,
        " has a malformed header: not a JSON object");
    const uint64_t data_size = size - data_start_;
    for (const auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        for (const auto& [k, val] : v.items()) {
          metadata_[k] = val.is_string() ? val.get<std::string>() : val.dump();
        }
        continue;
      }
      try {
        auto dtype = name_to_dtype(v.at("dtype").get<std::string>());
        TORCH_CHECK(
            dtype.has_value(), "torchtp: ", path, ": tensor '", name,
            "' has an unknown dtype ", v.at("dtype").dump());
        Entry e{
            *dtype, v.at("shape").get<std::vector<int64_t>>(),
            v.at("data_offsets").at(0).get<uint64_t>(),
            v.at("data_offsets").at(1).get<uint64_t>()};
        uint64_t numel = 1;
        for (int64_t d : e.shape) {
          TORCH_CHECK(
              d >= 0, "torchtp: ", path, ": tensor '", name,
              "' has a negative dim");
          numel *= static_cast<uint64_t>(d);
        }
        TORCH_CHECK(
            e.begin <= e.end && e.end <= data_size &&
                e.end - e.begin == numel * at::elementSize(e.dtype),
            "torchtp: ", path, " is truncated or corrupt: tensor '", name,
            "' claims bytes [", e.begin, ", ", e.end, ") of a ", data_size,
            "-byte data section for ", numel, " elements");
        entries_.emplace(name, std::move(e));
      } catch (const nlohmann::json::exception& ex) {
        TORCH_CHECK(
            false, "torchtp: ", path, " has a malformed entry for '", name,
            "': ", ex.what());
      }
    }
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

bool SafetensorsReader::contains(const std::string& name) const {
  return entries_.count(name) > 0;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& item : entries_) {
    out.push_back(item.first);
  }
  return out;
}

const SafetensorsReader::Entry& SafetensorsReader::entry(
    const std::string& name) const {
  auto it = entries_.find(name);
  TORCH_CHECK(
      it != entries_.end(), "torchtp: ", path_, " has no tensor '", name, "'");
  return it->second;
}

std::vector<int64_t> SafetensorsReader::shape(const std::string& name) const {
  return entry(name).shape;
}

at::ScalarType SafetensorsReader::dtype(const std::string& name) const {
  return entry(name).dtype;
}

at::Tensor SafetensorsReader::read(const std::string& name) const {
  const auto& e = entry(name);
  auto t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
  read_all(fd_, t.data_ptr(), e.end - e.begin, data_start_ + e.begin, path_);
  return t;
}

at::Tensor SafetensorsReader::read_block(
    const std::string& name,
    at::IntArrayRef start,
    at::IntArrayRef length) const {
  const auto& e = entry(name);
  const int64_t rank = static_cast<int64_t>(e.shape.size());
  bool inside = static_cast<int64_t>(start.size()) == rank &&
      static_cast<int64_t>(length.size()) == rank;
  for (int64_t d = 0; inside && d < rank; ++d) {
    inside = start[d] >= 0 && length[d] >= 0 &&
        start[d] + length[d] <= e.shape[d];
  }
  TORCH_CHECK(
      inside, "torchtp: ", path_, ": cannot read the block of ", length,
      " from ", start, " of tensor '", name, "' of shape ",
      at::IntArrayRef(e.shape));
  auto t = at::empty(length, at::TensorOptions().dtype(e.dtype));
  if (t.numel() == 0) {
    return t;
  }
  // The trailing dims read whole, with the one before them (`outer`),
  // make one contiguous run; every index of the dims before `outer` is one
  // positioned read.
  int64_t outer = rank - 1;
  while (outer > 0 && length[outer] == e.shape[outer]) {
    --outer;
  }
  const uint64_t element = at::elementSize(e.dtype);
  std::vector<uint64_t> stride(rank); // bytes, in the file
  uint64_t s = element;
  for (int64_t d = rank - 1; d >= 0; --d) {
    stride[d] = s;
    s *= static_cast<uint64_t>(e.shape[d]);
  }
  const uint64_t run =
      rank == 0 ? element
                : static_cast<uint64_t>(length[outer]) * stride[outer];
  std::vector<int64_t> index(start.begin(), start.end());
  auto* out = static_cast<char*>(t.data_ptr());
  for (;;) {
    uint64_t offset = data_start_ + e.begin;
    for (int64_t d = 0; d < rank; ++d) {
      offset += static_cast<uint64_t>(index[d]) * stride[d];
    }
    read_all(fd_, out, run, offset, path_);
    out += run;
    // The next index of the dims before `outer`, last dim fastest.
    int64_t d = outer - 1;
    while (d >= 0 && ++index[d] == start[d] + length[d]) {
      index[d] = start[d];
      --d;
    }
    if (d < 0) {
      return t;
    }
  }
}

at::Tensor SafetensorsReader::read_narrow(
    const std::string& name, int64_t dim, int64_t start, int64_t length) const {
  auto shape = entry(name).shape;
  TORCH_CHECK(
      dim >= 0 && dim < static_cast<int64_t>(shape.size()), "torchtp: ",
      path_, ": tensor '", name, "' of shape ", at::IntArrayRef(shape),
      " has no dim ", dim);
  std::vector<int64_t> starts(shape.size(), 0);
  starts[dim] = start;
  shape[dim] = length;
  return read_block(name, starts, shape);
}

at::Tensor SafetensorsReader::read(
    const std::string& name, uint32_t expected_crc) const {
  auto t = read(name);
  const uint32_t crc = tensor_crc32(t);
  TORCH_CHECK(
      crc == expected_crc, "torchtp: checksum mismatch in ", path_,
      " for tensor '", name, "' (CRC-32 ", crc, ", expected ", expected_crc,
      "): the file was altered or corrupted");
  return t;
}

namespace detail {
uint64_t safetensors_bytes_read() {
  return bytes_read.load();
}
} // namespace detail

} // namespace torchtp
