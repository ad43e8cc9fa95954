// hold_port ADDR PORT: listens on ADDR:PORT and never answers, as a stray
// server on the rendezvous port would; the multi-host test bed uses it for
// "a port that is taken". Prints "listening" once the port is held, then
// sleeps until killed. Plain POSIX, so it builds without libtorch.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: hold_port ADDR PORT\n");
    return 2;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
    std::fprintf(stderr, "hold_port: '%s' is not an IPv4 address\n", argv[1]);
    return 2;
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ||
      listen(fd, 16)) {
    std::perror("hold_port");
    return 1;
  }
  std::printf("listening\n");
  std::fflush(stdout);
  for (;;) {
    pause();
  }
}
