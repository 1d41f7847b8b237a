#ifdef __linux__
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#endif

#include "CTCPProxyLinux.h"

#ifdef __linux__

const uint32_t CTCPProxyLinux_EPOLLIN = EPOLLIN;
const uint32_t CTCPProxyLinux_EPOLLOUT = EPOLLOUT;
const uint32_t CTCPProxyLinux_EPOLLRDHUP = EPOLLRDHUP;
const uint32_t CTCPProxyLinux_EPOLLERR = EPOLLERR;
const uint32_t CTCPProxyLinux_EPOLLHUP = EPOLLHUP;
const uint32_t CTCPProxyLinux_EPOLLPRI = EPOLLPRI;

ssize_t CTCPProxyLinux_splice(int from, int to, size_t length, int more) {
    return splice(from, NULL, to, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (more ? SPLICE_F_MORE : 0));
}

ssize_t CTCPProxyLinux_readPastMark(int socket, int pipeInput, size_t length) {
    char bytes[4096];
    ssize_t count = read(socket, bytes, length < sizeof(bytes) ? length : sizeof(bytes));
    if (count <= 0) {
        return count;
    }
    // The pipe is empty, and a page always fits into an empty pipe: this write cannot come back short.
    return write(pipeInput, bytes, (size_t)count) == count ? count : -1;
}

int CTCPProxyLinux_pipe(int fds[2], int size) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        return -1;
    }
    // Asking for more than /proc/sys/fs/pipe-max-size, or beyond the user's pipe-buffer quota, fails
    // with EPERM: the pipe keeps the size it has, and the caller decides whether that is enough.
    (void)fcntl(fds[0], F_SETPIPE_SZ, size);
    int capacity = fcntl(fds[0], F_GETPIPE_SZ);
    if (capacity < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    return capacity;
}

/// IP_TRANSPARENT, or IPV6_TRANSPARENT for an IPv6 socket: it may accept connections addressed elsewhere
/// (TPROXY) and bind another host's address (--spoof-source). EPERM without CAP_NET_ADMIN or CAP_NET_RAW.
static int setTransparent(int fd, sa_family_t family) {
    int one = 1;
    return family == AF_INET6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
                              : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
}

int CTCPProxyLinux_listen(const struct sockaddr *address, unsigned int length, int backlog, int reusePort, int transparent) {
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reusePort && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (transparent && setTransparent(fd, address->sa_family) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (bind(fd, address, length) != 0 || listen(fd, backlog) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int CTCPProxyLinux_accept(int listener, struct sockaddr *address, unsigned int *length) {
    socklen_t size = *length;
    int fd = accept4(listener, address, &size, SOCK_NONBLOCK | SOCK_CLOEXEC);
    *length = size;
    return fd;
}

int CTCPProxyLinux_connect(const struct sockaddr *address, unsigned int length, const struct sockaddr *source,
                           unsigned int sourceLength, int *connected) {
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // The handshake's last ACK waits for the first bytes (or CTCPProxyLinux_sendHeldACK).
    int zero = 0;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero));
    if (source != NULL) {
        // A source address that is not this host's (--spoof-source); a port given by the caller may still be
        // held in TIME_WAIT.
        int transparent = setTransparent(fd, source->sa_family);
        in_port_t port = source->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)source)->sin6_port
                                                       : ((const struct sockaddr_in *)source)->sin_port;
        if (port != 0) {
            (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        }
        if (transparent != 0 || bind(fd, source, sourceLength) != 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
    }
    if (connect(fd, address, length) == 0) {
        *connected = 1;
        return fd;
    }
    if (errno == EINPROGRESS) {
        *connected = 0;
        return fd;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

void CTCPProxyLinux_sendHeldACK(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

int CTCPProxyLinux_epollAddListener(int epoll, int fd, uint64_t token) {
    struct epoll_event event = {0};
    event.events = EPOLLIN | EPOLLEXCLUSIVE;
    event.data.u64 = token;
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

int CTCPProxyLinux_epollCreate(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int CTCPProxyLinux_epollAdd(int epoll, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {0};
    event.events = events | EPOLLET;
    event.data.u64 = token;
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

int CTCPProxyLinux_epollModify(int epoll, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {0};
    event.events = events | EPOLLET;
    event.data.u64 = token;
    return epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event);
}

int CTCPProxyLinux_epollRemove(int epoll, int fd) {
    struct epoll_event event = {0};
    return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event);
}

int CTCPProxyLinux_epollWait(int epoll, CTCPProxyLinux_Event *events, int capacity, int timeoutMilliseconds) {
    struct epoll_event raw[64];
    if (capacity > 64) {
        capacity = 64;
    }
    int count = epoll_wait(epoll, raw, capacity, timeoutMilliseconds);
    for (int index = 0; index < count; index++) {
        events[index].events = raw[index].events;
        events[index].token = raw[index].data.u64;
    }
    return count;
}

int CTCPProxyLinux_eventCreate(void) {
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

int CTCPProxyLinux_eventSignal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof(one)) == sizeof(one) ? 0 : -1;
}

void CTCPProxyLinux_eventDrain(int fd) {
    uint64_t value;
    (void)read(fd, &value, sizeof(value));
}


int CTCPProxyLinux_routeIsLocal(int family, const void *address, int length) {
    if ((family != AF_INET || length != 4) && (family != AF_INET6 || length != 16)) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) {
        return -1;
    }
    struct timeval timeout = {.tv_sec = 1};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct {
        struct nlmsghdr header;
        struct rtmsg route;
        char attributes[32];
    } request;
    memset(&request, 0, sizeof request);
    request.header.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    request.header.nlmsg_type = RTM_GETROUTE;
    request.header.nlmsg_flags = NLM_F_REQUEST;
    request.route.rtm_family = (unsigned char)family;
    request.route.rtm_dst_len = (unsigned char)(length * 8);
    struct rtattr *destination = (struct rtattr *)((char *)&request + NLMSG_ALIGN(request.header.nlmsg_len));
    destination->rta_type = RTA_DST;
    destination->rta_len = RTA_LENGTH(length);
    memcpy(RTA_DATA(destination), address, (size_t)length);
    request.header.nlmsg_len = NLMSG_ALIGN(request.header.nlmsg_len) + RTA_LENGTH(length);
    if (send(fd, &request, request.header.nlmsg_len, 0) < 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    char reply[4096] __attribute__((aligned(NLMSG_ALIGNTO)));
    ssize_t count = recv(fd, reply, sizeof reply, 0);
    int error = errno;
    close(fd);
    const struct nlmsghdr *header = (const struct nlmsghdr *)reply;
    if (count < 0) {
        errno = error;
        return -1;
    }
    if (!NLMSG_OK(header, (unsigned int)count) || header->nlmsg_type != RTM_NEWROUTE) {
        errno = EHOSTUNREACH;  // an NLMSG_ERROR: no route at all
        return -1;
    }
    const struct rtmsg *route = NLMSG_DATA(header);
    return route->rtm_type == RTN_LOCAL ? 1 : 0;
}
#else

#include <errno.h>

const uint32_t CTCPProxyLinux_EPOLLIN = 0x001;
const uint32_t CTCPProxyLinux_EPOLLOUT = 0x004;
const uint32_t CTCPProxyLinux_EPOLLRDHUP = 0x2000;
const uint32_t CTCPProxyLinux_EPOLLERR = 0x008;
const uint32_t CTCPProxyLinux_EPOLLHUP = 0x010;
const uint32_t CTCPProxyLinux_EPOLLPRI = 0x002;

ssize_t CTCPProxyLinux_splice(int from, int to, size_t length, int more) { errno = ENOSYS; return -1; }
ssize_t CTCPProxyLinux_readPastMark(int socket, int pipeInput, size_t length) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_pipe(int fds[2], int size) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_listen(const struct sockaddr *address, unsigned int length, int backlog, int reusePort, int transparent) {
    errno = ENOSYS;
    return -1;
}
void CTCPProxyLinux_sendHeldACK(int fd) {}
int CTCPProxyLinux_accept(int listener, struct sockaddr *address, unsigned int *length) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_connect(const struct sockaddr *address, unsigned int length, const struct sockaddr *source,
                           unsigned int sourceLength, int *connected) {
    errno = ENOSYS;
    return -1;
}
int CTCPProxyLinux_epollAddListener(int epoll, int fd, uint64_t token) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_epollCreate(void) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_epollAdd(int epoll, int fd, uint32_t events, uint64_t token) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_epollModify(int epoll, int fd, uint32_t events, uint64_t token) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_epollRemove(int epoll, int fd) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_epollWait(int epoll, CTCPProxyLinux_Event *events, int capacity, int timeoutMilliseconds) {
    errno = ENOSYS;
    return -1;
}
int CTCPProxyLinux_eventCreate(void) { errno = ENOSYS; return -1; }
int CTCPProxyLinux_eventSignal(int fd) { errno = ENOSYS; return -1; }
void CTCPProxyLinux_eventDrain(int fd) {}

int CTCPProxyLinux_routeIsLocal(int family, const void *address, int length) { errno = ENOSYS; return -1; }
#endif
