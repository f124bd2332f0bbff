/*
 * nbd_file: the few Linux file calls the file backend needs and Node's fs
 * lacks — fallocate (punch hole / zero range), lseek SEEK_DATA/SEEK_HOLE,
 * posix_fadvise, and the block-device ioctls BLKGETSIZE64 / BLKDISCARD.
 *
 * Everything that can block (fallocate can take a while on a big range, a
 * device discard longer) runs on libuv's thread pool through
 * napi_create_async_work and settles a promise, so the event loop never
 * waits on the disk. Punch, zero and discard take an optional `sync` flag:
 * fdatasync in the same job, so a FUA request costs one thread-pool round
 * trip instead of two (what nbdkit's file plugin does on its own thread). Errors reject with an Error whose `code` is the errno
 * name (EOPNOTSUPP, ENOSPC …) so the JS side can pick the fallback or the
 * NBD error to send.
 *
 * One call runs on the calling thread and never waits: preadNowait, a
 * preadv2(RWF_NOWAIT) that copies only what the page cache already holds
 * (the kernel answers EAGAIN instead of going to the disk), so a READ of
 * cached data costs no thread-pool round trip.
 *
 * Plain node_api.h (N-API version 8): no node-addon-api, no C++.
 */
#define _GNU_SOURCE
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

enum op {
  OP_PUNCH_HOLE,
  OP_ZERO_RANGE,
  OP_FADVISE_WILLNEED,
  OP_BLK_DISCARD,
  OP_BLK_GETSIZE64,
  OP_MAP_EXTENTS,
};

/* Enough extents for one BLOCK_STATUS reply; a client asks again for the rest. */
#define MAX_EXTENTS 1024

struct work {
  napi_async_work handle;
  napi_deferred deferred;
  enum op op;
  int fd;
  int64_t offset;
  int64_t length;
  int sync_failed; /* the error is fdatasync's */
  int sync;       /* fdatasync after a successful punch / zero / discard (FUA in one job) */
  int err;        /* errno of the failing call, 0 on success */
  int64_t result; /* BLKGETSIZE64 */
  /* OP_MAP_EXTENTS: pairs of (length, hole 0/1), at most max (0: MAX_EXTENTS). */
  int max;
  int count;
  int64_t ext_len[MAX_EXTENTS];
  uint8_t ext_hole[MAX_EXTENTS];
};

static const char *errno_name(int e) {
  switch (e) {
  case EOPNOTSUPP: return "EOPNOTSUPP"; /* == ENOTSUP on Linux */
  case ENOSPC: return "ENOSPC";
  case EIO: return "EIO";
  case EINVAL: return "EINVAL";
  case ENXIO: return "ENXIO";
  case EBADF: return "EBADF";
  case ENOTTY: return "ENOTTY";
  case EPERM: return "EPERM";
  case EACCES: return "EACCES";
  case EFBIG: return "EFBIG";
  case EROFS: return "EROFS";
  case ENODEV: return "ENODEV";
  case ENOSYS: return "ENOSYS";
  case EINTR: return "EINTR";
  case EDQUOT: return "EDQUOT";
  default: return NULL;
  }
}

/* Walk [offset, offset+length) with SEEK_DATA / SEEK_HOLE. */
static void map_extents(struct work *w) {
  int64_t pos = w->offset;
  const int64_t end = w->offset + w->length;
  const int max = w->max > 0 && w->max < MAX_EXTENTS ? w->max : MAX_EXTENTS;
  w->count = 0;
  while (pos < end && w->count < max) {
    off_t data = lseek(w->fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) { w->err = errno; return; }
      data = end; /* no data after pos: a hole up to EOF */
    }
    if (data > pos) {
      int64_t hole_end = data < end ? data : end;
      w->ext_len[w->count] = hole_end - pos;
      w->ext_hole[w->count++] = 1;
      pos = hole_end;
      continue;
    }
    off_t hole = lseek(w->fd, pos, SEEK_HOLE);
    if (hole < 0) { w->err = errno; return; }
    if (hole <= pos) hole = end; /* cannot happen for a sane fs; never loop */
    int64_t data_end = hole < end ? hole : end;
    w->ext_len[w->count] = data_end - pos;
    w->ext_hole[w->count++] = 0;
    pos = data_end;
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  struct work *w = data;
  int r = 0;
  switch (w->op) {
  case OP_PUNCH_HOLE:
    r = fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, w->offset, w->length);
    break;
  case OP_ZERO_RANGE:
    r = fallocate(w->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, w->offset, w->length);
    break;
  case OP_FADVISE_WILLNEED:
    /* posix_fadvise returns the error instead of setting errno. */
    r = posix_fadvise(w->fd, w->offset, w->length, POSIX_FADV_WILLNEED);
    if (r != 0) { w->err = r; r = 0; }
    break;
  case OP_BLK_DISCARD: {
    uint64_t range[2] = { (uint64_t)w->offset, (uint64_t)w->length };
    r = ioctl(w->fd, BLKDISCARD, range);
    break;
  }
  case OP_BLK_GETSIZE64: {
    uint64_t size = 0;
    r = ioctl(w->fd, BLKGETSIZE64, &size);
    w->result = (int64_t)size;
    break;
  }
  case OP_MAP_EXTENTS:
    map_extents(w);
    break;
  }
  if (r < 0) w->err = errno;
  else if (w->sync && w->err == 0 && fdatasync(w->fd) < 0) {
    w->err = errno;
    w->sync_failed = 1;
  }
}

static napi_value make_error(napi_env env, int e, const char *what) {
  const char *name = errno_name(e);
  char code[32];
  if (!name) { snprintf(code, sizeof code, "E%d", e); name = code; }
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s (%s)", what, strerror(e), name);
  napi_value jcode, jmsg, err, jerrno;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &jcode);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg);
  napi_create_error(env, jcode, jmsg, &err);
  napi_create_int32(env, e, &jerrno);
  napi_set_named_property(env, err, "errno", jerrno);
  return err;
}

static const char *op_name(enum op op) {
  switch (op) {
  case OP_PUNCH_HOLE: return "fallocate(PUNCH_HOLE)";
  case OP_ZERO_RANGE: return "fallocate(ZERO_RANGE)";
  case OP_FADVISE_WILLNEED: return "posix_fadvise(WILLNEED)";
  case OP_BLK_DISCARD: return "ioctl(BLKDISCARD)";
  case OP_BLK_GETSIZE64: return "ioctl(BLKGETSIZE64)";
  case OP_MAP_EXTENTS: return "lseek(SEEK_DATA/SEEK_HOLE)";
  }
  return "?";
}

/* Flat [length0, hole0, length1, hole1, …] of a finished map. */
static napi_value extents_array(napi_env env, const struct work *w) {
  napi_value value;
  napi_create_array_with_length(env, (size_t)w->count * 2, &value);
  for (int i = 0; i < w->count; i++) {
    napi_value len, hole;
    napi_create_double(env, (double)w->ext_len[i], &len);
    napi_create_uint32(env, w->ext_hole[i], &hole);
    napi_set_element(env, value, (uint32_t)i * 2, len);
    napi_set_element(env, value, (uint32_t)i * 2 + 1, hole);
  }
  return value;
}

static void complete(napi_env env, napi_status status, void *data) {
  struct work *w = data;
  napi_value value;
  if (status != napi_ok) {
    napi_value msg;
    napi_create_string_utf8(env, "nbd_file: async work cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &value);
    napi_reject_deferred(env, w->deferred, value);
  } else if (w->err != 0) {
    napi_reject_deferred(env, w->deferred, make_error(env, w->err, w->sync_failed ? "fdatasync" : op_name(w->op)));
  } else {
    if (w->op == OP_BLK_GETSIZE64) {
      napi_create_double(env, (double)w->result, &value);
    } else if (w->op == OP_MAP_EXTENTS) {
      value = extents_array(env, w);
    } else {
      napi_get_undefined(env, &value);
    }
    napi_resolve_deferred(env, w->deferred, value);
  }
  napi_delete_async_work(env, w->handle);
  free(w);
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

/* The fd, offset and length a call names (its first `want` arguments), checked, in a new work item; NULL after throwing. */
static struct work *new_work(napi_env env, napi_value *argv, size_t argc, size_t want, enum op op) {
  int64_t a[3] = { 0, 0, 0 };
  for (size_t i = 0; i < want; i++) {
    if (i >= argc || !get_i64(env, argv[i], &a[i])) {
      napi_throw_type_error(env, NULL, "nbd_file: expected non-negative integer arguments (fd, offset, length)");
      return NULL;
    }
  }
  if (a[0] > INT32_MAX) {
    napi_throw_type_error(env, NULL, "nbd_file: bad fd");
    return NULL;
  }
  struct work *w = calloc(1, sizeof *w);
  if (!w) {
    napi_throw_error(env, "ENOMEM", "nbd_file: out of memory");
    return NULL;
  }
  w->op = op;
  w->fd = (int)a[0];
  w->offset = a[1];
  w->length = a[2];
  return w;
}

/* fn(fd[, offset, length[, sync]]) → Promise. `sync` (punch, zero, discard): fdatasync after, in the same job. */
static napi_value start(napi_env env, napi_callback_info info, enum op op, size_t want) {
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct work *w = new_work(env, argv, argc, want, op);
  if (!w) return NULL;
  const int takes_sync = op == OP_PUNCH_HOLE || op == OP_ZERO_RANGE || op == OP_BLK_DISCARD;
  napi_valuetype sync_type = napi_undefined;
  if (takes_sync && argc > 3) napi_typeof(env, argv[3], &sync_type);
  if (sync_type != napi_undefined) {
    bool sync = false;
    if (napi_get_value_bool(env, argv[3], &sync) != napi_ok) {
      free(w);
      napi_throw_type_error(env, NULL, "nbd_file: the fourth argument (sync) must be a boolean");
      return NULL;
    }
    w->sync = sync;
  }
  napi_value promise, name;
  napi_create_promise(env, &w->deferred, &promise);
  napi_create_string_utf8(env, op_name(op), NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, w, &w->handle);
  napi_queue_async_work(env, w->handle);
  return promise;
}

/*
 * mapExtentsSync(fd, offset, length, maxExtents) → flat array, on the calling thread: the
 * SEEK_DATA / SEEK_HOLE walk without the thread-pool round trip (QEMU's file driver also calls
 * lseek inline). At most maxExtents (≤ MAX_EXTENTS) extents, so the work is bounded.
 */
static napi_value map_extents_sync(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t max = MAX_EXTENTS;
  if (argc > 3 && (!get_i64(env, argv[3], &max) || max < 1)) {
    napi_throw_type_error(env, NULL, "nbd_file: maxExtents must be a positive integer");
    return NULL;
  }
  struct work *w = new_work(env, argv, argc, 3, OP_MAP_EXTENTS);
  if (!w) return NULL;
  w->max = max < MAX_EXTENTS ? (int)max : MAX_EXTENTS;
  map_extents(w);
  napi_value result = NULL;
  if (w->err != 0) napi_throw(env, make_error(env, w->err, op_name(OP_MAP_EXTENTS)));
  else result = extents_array(env, w);
  free(w);
  return result;
}

/*
 * preadNowait(fd, buffer, offset) → bytes copied into buffer (0 … its length), or -errno: one
 * preadv2(RWF_NOWAIT) on the calling thread. It copies only pages already in the page cache: a
 * short count (or -EAGAIN) means the rest is not cached (or the file ends there), and the caller
 * reads the rest on the thread pool. -EOPNOTSUPP: the filesystem does not do RWF_NOWAIT.
 */
static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd, offset;
  void *data = NULL;
  size_t length = 0;
  bool is_buffer = false;
  if (argc < 3 || !get_i64(env, argv[0], &fd) || fd > INT32_MAX || !get_i64(env, argv[2], &offset) ||
      napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "nbd_file: expected (fd, buffer, offset)");
    return NULL;
  }
  ssize_t n = 0;
  if (length > 0) {
    struct iovec iov = { .iov_base = data, .iov_len = length };
    do n = preadv2((int)fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) n = -errno;
  }
  napi_value result;
  napi_create_int64(env, (int64_t)n, &result);
  return result;
}

static napi_value punch_hole(napi_env env, napi_callback_info i) { return start(env, i, OP_PUNCH_HOLE, 3); }
static napi_value zero_range(napi_env env, napi_callback_info i) { return start(env, i, OP_ZERO_RANGE, 3); }
static napi_value fadvise_willneed(napi_env env, napi_callback_info i) { return start(env, i, OP_FADVISE_WILLNEED, 3); }
static napi_value blk_discard(napi_env env, napi_callback_info i) { return start(env, i, OP_BLK_DISCARD, 3); }
static napi_value blk_getsize64(napi_env env, napi_callback_info i) { return start(env, i, OP_BLK_GETSIZE64, 1); }
static napi_value map_extents_js(napi_env env, napi_callback_info i) { return start(env, i, OP_MAP_EXTENTS, 3); }

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL },
    { "zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fadviseWillneed", NULL, fadvise_willneed, NULL, NULL, NULL, napi_enumerable, NULL },
    { "blkDiscard", NULL, blk_discard, NULL, NULL, NULL, napi_enumerable, NULL },
    { "blkGetSize64", NULL, blk_getsize64, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mapExtents", NULL, map_extents_js, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mapExtentsSync", NULL, map_extents_sync, NULL, NULL, NULL, napi_enumerable, NULL },
    { "preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_value max;
  napi_create_uint32(env, MAX_EXTENTS, &max);
  napi_set_named_property(env, exports, "maxExtents", max);
  /* 2: punch, zero and discard take `sync`; mapExtentsSync. 3: preadNowait (src/backends/file-native.ts checks this). */
  napi_value version;
  napi_create_uint32(env, 3, &version);
  napi_set_named_property(env, exports, "version", version);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
