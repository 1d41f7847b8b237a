// A minimal io_uring for the direct engine: it batches non-blocking socket reads and writes, so that a
// batch of ready sockets costs one system call for all the reads and one for all the writes (raw syscalls,
// no liburing). See CTCPProxyLinux.h.
#ifdef __linux__
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "CTCPProxyLinux.h"

#ifdef __linux__

struct CTCPProxyLinux_Ring {
    int fd;
    unsigned *sqHead, *sqTail, sqMask, sqEntries;
    struct io_uring_sqe *sqes;
    unsigned *cqHead, *cqTail, cqMask;
    struct io_uring_cqe *cqes;
    void *rings;
    size_t ringsSize, sqesSize;
    unsigned queued;
};

static int enter(int fd, unsigned submit, unsigned wait) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, wait ? IORING_ENTER_GETEVENTS : 0, NULL, (size_t)0);
}

static int setUp(CTCPProxyLinux_Ring *r, unsigned entries) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    // One thread submits; completions are only reaped when it asks (both since 6.1). Older kernels: none.
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) {
        memset(&p, 0, sizeof p);
        r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
        if (r->fd < 0) return -1;
    }
    // One mapping for both rings (5.4), and completions never dropped (5.5).
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
        errno = ENOSYS;
        return -1;
    }
    size_t sqSize = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqSize = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->ringsSize = sqSize > cqSize ? sqSize : cqSize;
    r->rings = mmap(NULL, r->ringsSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->rings == MAP_FAILED) { r->rings = NULL; return -1; }
    r->sqesSize = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqesSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) { r->sqes = NULL; return -1; }
    char *base = r->rings;
    r->sqHead = (unsigned *)(base + p.sq_off.head);
    r->sqTail = (unsigned *)(base + p.sq_off.tail);
    r->sqMask = *(unsigned *)(base + p.sq_off.ring_mask);
    r->sqEntries = p.sq_entries;
    r->cqHead = (unsigned *)(base + p.cq_off.head);
    r->cqTail = (unsigned *)(base + p.cq_off.tail);
    r->cqMask = *(unsigned *)(base + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    unsigned *array = (unsigned *)(base + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;
    return 0;
}

/// Whether an operation that cannot go on now completes at once with -EAGAIN, as the engine relies on (a
/// kernel that parked it until the socket was ready would hang the batch): queued by `queueOne`.
static int completesWithoutWaiting(CTCPProxyLinux_Ring *r, int (*queueOne)(CTCPProxyLinux_Ring *, int, void *, unsigned, uint64_t), int fd) {
    char byte = 0;
    CTCPProxyLinux_Completion completion = {0, 0};
    int submitted;
    if (queueOne(r, fd, &byte, 1, 7) != 0) return 0;
    do {
        submitted = enter(r->fd, 1, 0);
    } while (submitted < 0 && errno == EINTR);
    int ok = submitted == 1;
    r->queued = 0;
    if (!ok) return 0;
    // Nothing waits: the completion must be there without asking the kernel to wait for it.
    return CTCPProxyLinux_ringReap(r, &completion, 1) == 1 && completion.token == 7 && completion.result == -EAGAIN;
}

static int sendOne(CTCPProxyLinux_Ring *r, int fd, void *buffer, unsigned length, uint64_t token) {
    return CTCPProxyLinux_ringSend(r, fd, buffer, length, token);
}

/// A recv on an empty socket and a send into a full one both fail at once.
static int neverWaits(CTCPProxyLinux_Ring *r) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) != 0) return 0;
    int ok = completesWithoutWaiting(r, CTCPProxyLinux_ringRecv, pair[0]);
    if (ok) {
        static char fill[4096];
        while (send(pair[0], fill, sizeof fill, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {}
        ok = completesWithoutWaiting(r, sendOne, pair[0]);
    }
    close(pair[0]);
    close(pair[1]);
    return ok;
}

CTCPProxyLinux_Ring *CTCPProxyLinux_ringCreate(unsigned entries) {
    CTCPProxyLinux_Ring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->fd = -1;
    errno = 0;
    int ready = setUp(r, entries) == 0;
    if (!ready || !neverWaits(r)) {
        int error = !ready && errno ? errno : ENOSYS;
        CTCPProxyLinux_ringDestroy(r);
        errno = error;
        return NULL;
    }
    return r;
}

void CTCPProxyLinux_ringDestroy(CTCPProxyLinux_Ring *r) {
    if (!r) return;
    if (r->sqes) munmap(r->sqes, r->sqesSize);
    if (r->rings) munmap(r->rings, r->ringsSize);
    if (r->fd >= 0) close(r->fd);
    free(r);
}

static int queue(CTCPProxyLinux_Ring *r, int op, int fd, const void *buffer, unsigned length, int flags, uint64_t token) {
    unsigned tail = *r->sqTail;
    if (tail - __atomic_load_n(r->sqHead, __ATOMIC_ACQUIRE) >= r->sqEntries) {
        errno = EBUSY;
        return -1;
    }
    struct io_uring_sqe *sqe = &r->sqes[tail & r->sqMask];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = (uint8_t)op;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buffer;
    sqe->len = length;
    sqe->msg_flags = (uint32_t)flags;
    sqe->user_data = token;
    __atomic_store_n(r->sqTail, tail + 1, __ATOMIC_RELEASE);
    r->queued++;
    return 0;
}

int CTCPProxyLinux_ringRecv(CTCPProxyLinux_Ring *r, int fd, void *buffer, unsigned length, uint64_t token) {
    return queue(r, IORING_OP_RECV, fd, buffer, length, MSG_DONTWAIT, token);
}

int CTCPProxyLinux_ringSend(CTCPProxyLinux_Ring *r, int fd, const void *buffer, unsigned length, uint64_t token) {
    return queue(r, IORING_OP_SEND, fd, buffer, length, MSG_DONTWAIT | MSG_NOSIGNAL, token);
}

int CTCPProxyLinux_ringRun(CTCPProxyLinux_Ring *r) {
    unsigned want = r->queued;
    unsigned submitted = 0;
    r->queued = 0;
    while (submitted < want) {
        // Every operation is non-blocking, so each completes during the submission; waiting for all of them
        // only collects completions the kernel already has.
        int count = enter(r->fd, want - submitted, want - submitted);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) {
            // Entries left in the queue would run with the next batch, on descriptors and memory that are no
            // longer theirs: the caller must drop the ring.
            if (count == 0) errno = EIO;
            return -1;
        }
        submitted += (unsigned)count;
    }
    return (int)submitted;
}

int CTCPProxyLinux_ringReap(CTCPProxyLinux_Ring *r, CTCPProxyLinux_Completion *out, int capacity) {
    unsigned head = *r->cqHead;
    unsigned tail = __atomic_load_n(r->cqTail, __ATOMIC_ACQUIRE);
    int count = 0;
    while (head != tail && count < capacity) {
        struct io_uring_cqe *cqe = &r->cqes[head & r->cqMask];
        out[count].token = cqe->user_data;
        out[count].result = cqe->res;
        count++;
        head++;
    }
    __atomic_store_n(r->cqHead, head, __ATOMIC_RELEASE);
    return count;
}

#else

#include <errno.h>

CTCPProxyLinux_Ring *CTCPProxyLinux_ringCreate(unsigned entries) { errno = ENOSYS; return NULL; }
void CTCPProxyLinux_ringDestroy(CTCPProxyLinux_Ring *ring) {}
int CTCPProxyLinux_ringRecv(CTCPProxyLinux_Ring *ring, int fd, void *buffer, unsigned length, uint64_t token) {
    errno = ENOSYS;
    return -1;
}
int CTCPProxyLinux_ringSend(CTCPProxyLinux_Ring *ring, int fd, const void *buffer, unsigned length, uint64_t token) {
    errno = ENOSYS;
    return -1;
}
int CTCPProxyLinux_ringRun(CTCPProxyLinux_Ring *ring) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_ringReap(CTCPProxyLinux_Ring *ring, CTCPProxyLinux_Completion *out, int capacity) { return 0; }

#endif
