// The few Linux calls the direct engine needs that Swift's Glibc module does not import (it is
// built without _GNU_SOURCE): splice(2), pipe sizes, epoll, eventfd, accept4, non-blocking sockets and a small io_uring. Each is a thin wrapper that
// returns -1 and leaves errno set on failure, as the call it wraps does. On other systems every
// function fails with ENOSYS, so the Swift side simply stays on NIO there.
#ifndef C_TCPPROXY_LINUX_H
#define C_TCPPROXY_LINUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// epoll event bits, as <sys/epoll.h> defines them.
extern const uint32_t CTCPProxyLinux_EPOLLIN;
extern const uint32_t CTCPProxyLinux_EPOLLOUT;
extern const uint32_t CTCPProxyLinux_EPOLLRDHUP;
extern const uint32_t CTCPProxyLinux_EPOLLERR;
extern const uint32_t CTCPProxyLinux_EPOLLHUP;
extern const uint32_t CTCPProxyLinux_EPOLLPRI;

/// One readiness report: which events, for which registration token. (struct epoll_event is packed on
/// x86_64, which Swift imports poorly; this one is not.)
typedef struct {
    uint32_t events;
    uint64_t token;
} CTCPProxyLinux_Event;

/// splice(2) with SPLICE_F_MOVE | SPLICE_F_NONBLOCK and no offsets: moves up to `length` bytes from
/// `from` to `to`, one of which must be a pipe. With `more`, also SPLICE_F_MORE (more follows: into a
/// socket, a last part smaller than a segment waits for it, as with MSG_MORE).
ssize_t CTCPProxyLinux_splice(int from, int to, size_t length, int more);

/// Reads past a TCP urgent mark, which splice(2) never does (it stops there with EAGAIN for good): up to
/// `length` bytes (at most a page) with read(2), which skips the urgent byte as the socket API does without
/// SO_OOBINLINE, written into the empty pipe `pipeInput`. Returns the count moved, 0 at EOF, or -1.
ssize_t CTCPProxyLinux_readPastMark(int socket, int pipeInput, size_t length);

/// A non-blocking, close-on-exec pipe whose capacity is set to at least `size` bytes if the system
/// allows (F_SETPIPE_SZ). Returns the capacity it has (F_GETPIPE_SZ), or -1.
int CTCPProxyLinux_pipe(int fds[2], int size);

/// Whether the kernel routes `address` (4 bytes for AF_INET, 16 for AF_INET6) to this host: the route it
/// would take has type RTN_LOCAL, as `ip route get` shows "local". That covers interface addresses and
/// addresses of `local` routes (AnyIP) alike. 1 or 0; -1 with errno when it cannot tell.
int CTCPProxyLinux_routeIsLocal(int family, const void *address, int length);

struct sockaddr;

/// A listening TCP socket for the direct engine: non-blocking, close-on-exec, SO_REUSEADDR and
/// TCP_NODELAY (accepted sockets inherit it), with SO_REUSEPORT when `reusePort` is 1 and IP_TRANSPARENT
/// (IPV6_TRANSPARENT for an IPv6 address) when `transparent` is 1, bound to `address` and listening with
/// `backlog`. Returns the descriptor, or -1 with errno set by the call that failed.
int CTCPProxyLinux_listen(const struct sockaddr *address, unsigned int length, int backlog, int reusePort, int transparent);

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC; the peer's address goes into `address` (at most
/// `*length` bytes; `*length` becomes its size).
int CTCPProxyLinux_accept(int listener, struct sockaddr *address, unsigned int *length);

/// A non-blocking, close-on-exec TCP socket with TCP_NODELAY, connecting to `address`. Returns the
/// descriptor (the connect is in progress, or done when `*connected` is 1), or -1 with errno set.
///
/// TCP_QUICKACK is off before the connect, so the kernel holds back the ACK that ends the handshake and
/// the first bytes written carry it: the server gets one segment less (HAProxy's `tcp-smart-connect`).
/// With no bytes to write once connected, call ``CTCPProxyLinux_sendHeldACK``.
///
/// With a `source` (else NULL), the socket is bound to it first with IP_TRANSPARENT (IPV6_TRANSPARENT), so it
/// may be another host's address (`--spoof-source`); a nonzero port is bound with SO_REUSEADDR.
int CTCPProxyLinux_connect(const struct sockaddr *address, unsigned int length, const struct sockaddr *source,
                           unsigned int sourceLength, int *connected);

/// Sends an ACK the kernel is holding back now (TCP_QUICKACK on).
void CTCPProxyLinux_sendHeldACK(int fd);

/// Registers a listening socket, level-triggered and EPOLLEXCLUSIVE (one engine wakes per connection),
/// for EPOLLIN, reported with `token`.
int CTCPProxyLinux_epollAddListener(int epoll, int fd, uint64_t token);

/// epoll_create1(EPOLL_CLOEXEC).
int CTCPProxyLinux_epollCreate(void);

/// Registers `fd`, edge-triggered, for `events`, reported with `token`.
int CTCPProxyLinux_epollAdd(int epoll, int fd, uint32_t events, uint64_t token);

/// Changes what `fd` is registered for (edge-triggered still); the kernel reports it at once if ready.
int CTCPProxyLinux_epollModify(int epoll, int fd, uint32_t events, uint64_t token);

/// Removes `fd`.
int CTCPProxyLinux_epollRemove(int epoll, int fd);

/// epoll_wait: up to `capacity` events into `events`, waiting at most `timeoutMilliseconds` (-1: forever).
/// Returns how many, or -1 (EINTR included).
int CTCPProxyLinux_epollWait(int epoll, CTCPProxyLinux_Event *events, int capacity, int timeoutMilliseconds);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int CTCPProxyLinux_eventCreate(void);

/// Adds 1 to the eventfd's counter (wakes its reader).
int CTCPProxyLinux_eventSignal(int fd);

/// Resets the eventfd's counter.
void CTCPProxyLinux_eventDrain(int fd);

/// An io_uring that batches non-blocking socket reads and writes (ring.c): queue any number, then one
/// system call runs them all. Opaque.
typedef struct CTCPProxyLinux_Ring CTCPProxyLinux_Ring;

/// One finished operation: the token it was queued with, and what recv(2)/send(2) returned (bytes, or
/// -errno).
typedef struct {
    uint64_t token;
    int32_t result;
} CTCPProxyLinux_Completion;

/// A ring with `entries` submission slots, or NULL with errno set: io_uring missing, disabled
/// (kernel.io_uring_disabled, a seccomp filter) or not completing a non-blocking recv at once.
CTCPProxyLinux_Ring *CTCPProxyLinux_ringCreate(unsigned entries);

/// Frees the ring (NULL is fine).
void CTCPProxyLinux_ringDestroy(CTCPProxyLinux_Ring *ring);

/// Queues recv(2) of up to `length` bytes into `buffer`, with MSG_DONTWAIT. 0, or -1 (EBUSY) when the
/// submission queue is full.
int CTCPProxyLinux_ringRecv(CTCPProxyLinux_Ring *ring, int fd, void *buffer, unsigned length, uint64_t token);

/// Queues send(2) of `length` bytes from `buffer`, with MSG_DONTWAIT | MSG_NOSIGNAL. 0, or -1 (EBUSY).
int CTCPProxyLinux_ringSend(CTCPProxyLinux_Ring *ring, int fd, const void *buffer, unsigned length, uint64_t token);

/// Submits everything queued and waits until it has all completed (at once: every operation is
/// non-blocking). Returns how many were submitted, or -1 with errno set when not all of it could be: what
/// did run can still be reaped, but the ring must then be destroyed (entries left in it would run later).
int CTCPProxyLinux_ringRun(CTCPProxyLinux_Ring *ring);

/// Takes up to `capacity` completions off the ring into `out`; returns how many.
int CTCPProxyLinux_ringReap(CTCPProxyLinux_Ring *ring, CTCPProxyLinux_Completion *out, int capacity);

#endif
