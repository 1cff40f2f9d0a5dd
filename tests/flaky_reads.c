// LD_PRELOAD shim: the first FLAKY_FAILS reads of files whose path contains FLAKY_PATH fail
// with EIO (a flaky disk); later reads succeed.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
static char watched[65536];
static int failed = 0;
static int want(void) { const char *n = getenv("FLAKY_FAILS"); return n ? atoi(n) : 1; }
static void mark(int fd, const char *path) {
  const char *p = getenv("FLAKY_PATH");
  if (fd >= 0 && fd < 65536) watched[fd] = (p && path && strstr(path, p)) ? 1 : 0;
}
#define OPEN_WRAP(name) \
int name(const char *path, int flags, ...) { \
  static int (*real)(const char *, int, ...) = 0; if (!real) real = dlsym(RTLD_NEXT, #name); \
  mode_t mode = 0; if (flags & O_CREAT) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); } \
  int fd = real(path, flags, mode); mark(fd, path); return fd; }
OPEN_WRAP(open)
OPEN_WRAP(open64)
#define OPENAT_WRAP(name) \
int name(int dir, const char *path, int flags, ...) { \
  static int (*real)(int, const char *, int, ...) = 0; if (!real) real = dlsym(RTLD_NEXT, #name); \
  mode_t mode = 0; if (flags & O_CREAT) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); } \
  int fd = real(dir, path, flags, mode); mark(fd, path); return fd; }
OPENAT_WRAP(openat)
OPENAT_WRAP(openat64)
static int fail(int fd) {
  if (fd >= 0 && fd < 65536 && watched[fd] && __atomic_fetch_add(&failed, 1, 0) < want()) {
    errno = EIO; return 1; }
  return 0;
}
ssize_t read(int fd, void *buf, size_t n) {
  static ssize_t (*real)(int, void *, size_t) = 0; if (!real) real = dlsym(RTLD_NEXT, "read");
  if (fail(fd)) return -1; return real(fd, buf, n); }
ssize_t pread(int fd, void *buf, size_t n, off_t off) {
  static ssize_t (*real)(int, void *, size_t, off_t) = 0; if (!real) real = dlsym(RTLD_NEXT, "pread");
  if (fail(fd)) return -1; return real(fd, buf, n, off); }
ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
  static ssize_t (*real)(int, void *, size_t, off_t) = 0; if (!real) real = dlsym(RTLD_NEXT, "pread64");
  if (fail(fd)) return -1; return real(fd, buf, n, off); }
