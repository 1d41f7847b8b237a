// Measurement prototype (docs/BENCHMARKS.md, 2026-12-07; not part of tcpproxy): a TCP proxy whose bytes
// never reach user space. Each bridge's two sockets go into a BPF sockhash; an SK_SKB verdict program
// (hand-assembled below) redirects every arriving skb to the peer socket's egress. User space accepts,
// connects, hands over, and only watches for EOF (EPOLLRDHUP) to pass shutdown(SHUT_WR) on and close.
// Needs root (CAP_BPF, CAP_NET_ADMIN). gcc -O2 -o sockmap-proxy sockmap-proxy.c
//
// Known to be wrong, which is part of what it showed: the kernel forwards redirected bytes from a
// workqueue, so user space sees a FIN before the bytes ahead of it have left, and its shutdown or close
// loses them (a server that answers and closes: the client gets a reset instead of the answer); and bytes
// that arrive between the hand-over read and the peer entries can be reordered. It serves keep-alive loads
// only, which is all it was measured on.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }

static int map_create(int type, int ks, int vs, int n) {
    union bpf_attr a; memset(&a, 0, sizeof a);
    a.map_type = type; a.key_size = ks; a.value_size = vs; a.max_entries = n;
    return bpf(BPF_MAP_CREATE, &a);
}
static int map_update(int fd, void *k, void *v) {
    union bpf_attr a; memset(&a, 0, sizeof a);
    a.map_fd = fd; a.key = (uint64_t)k; a.value = (uint64_t)v; a.flags = BPF_ANY;
    return bpf(BPF_MAP_UPDATE_ELEM, &a);
}
static int map_delete(int fd, void *k) {
    union bpf_attr a; memset(&a, 0, sizeof a);
    a.map_fd = fd; a.key = (uint64_t)k;
    return bpf(BPF_MAP_DELETE_ELEM, &a);
}

#define I(c, d, s, o, i) ((struct bpf_insn){c, d, s, o, i})
static int load_prog(int socks, int peers) {
    struct bpf_insn p[] = {
        I(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),            // r6 = skb
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        I(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),           // *(fp-8) = cookie
        I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, peers), I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8),
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 10, 0),              // no peer yet: pass to user space
        I(BPF_LDX | BPF_MEM | BPF_DW, 1, 0, 0, 0),
        I(BPF_STX | BPF_MEM | BPF_DW, 10, 1, -16, 0),          // *(fp-16) = peer cookie
        I(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
        I(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, socks), I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
        I(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -16),
        I(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),
        I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char log[65536];
    union bpf_attr a; memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SK_SKB; a.insns = (uint64_t)p; a.insn_cnt = sizeof p / sizeof p[0];
    a.license = (uint64_t)"GPL"; a.log_buf = (uint64_t)log; a.log_size = sizeof log; a.log_level = 1;
    int fd = bpf(BPF_PROG_LOAD, &a);
    if (fd < 0) fprintf(stderr, "prog load: %s\n%s\n", strerror(errno), log);
    return fd;
}

struct side { int fd, peer; uint64_t cookie; int eof; struct side *other; };

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

static void parse(const char *s, struct sockaddr_in *sa) {
    char h[64]; const char *c = strrchr(s, ':'); snprintf(h, sizeof h, "%.*s", (int)(c - s), s);
    memset(sa, 0, sizeof *sa); sa->sin_family = AF_INET; sa->sin_port = htons(atoi(c + 1));
    inet_pton(AF_INET, h, &sa->sin_addr);
}
static uint64_t cookie(int fd) { uint64_t c = 0; socklen_t l = sizeof c; getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l); return c; }

int main(int argc, char **argv) {
    struct sockaddr_in lsa, tsa; int have = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--listen")) { parse(argv[++i], &lsa); have |= 1; }
        else if (!strcmp(argv[i], "--target")) { parse(argv[++i], &tsa); have |= 2; }
    }
    if (have != 3) { fprintf(stderr, "usage: forward --listen H:P --target H:P\n"); return 64; }
    int socks = map_create(BPF_MAP_TYPE_SOCKHASH, 8, 8, 65536);
    int peers = map_create(BPF_MAP_TYPE_HASH, 8, 8, 65536);
    if (socks < 0 || peers < 0) { perror("map create"); return 1; }
    int prog = load_prog(socks, peers); if (prog < 0) return 1;
    union bpf_attr at; memset(&at, 0, sizeof at);
    at.target_fd = socks; at.attach_bpf_fd = prog; at.attach_type = BPF_SK_SKB_VERDICT;
    if (bpf(BPF_PROG_ATTACH, &at) < 0) { perror("attach"); return 1; }

    signal(SIGTERM, on_sig); signal(SIGINT, on_sig); signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (void *)&lsa, sizeof lsa) || listen(ls, 4096)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    fprintf(stderr, "listening on %s:%d\n", inet_ntoa(lsa.sin_addr), ntohs(lsa.sin_port));
    char buf[65536];
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (!s) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, 0);
                    if (c < 0) break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    int v = socket(AF_INET, SOCK_STREAM, 0);
                    setsockopt(v, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (connect(v, (void *)&tsa, sizeof tsa)) { close(c); close(v); continue; }
                    struct side *a = calloc(2, sizeof *a), *b = a + 1;
                    a->fd = c; b->fd = v; a->other = b; b->other = a;
                    a->cookie = cookie(c); b->cookie = cookie(v);
                    uint64_t fa = c, fb = v;
                    map_update(socks, &a->cookie, &fa); map_update(socks, &b->cookie, &fb);
                    // bytes that came before the hand-over: forward by hand (prototype: ignores the race
                    // with bytes that arrive between this read and the peer entries)
                    int fl = MSG_DONTWAIT; ssize_t r;
                    while ((r = recv(c, buf, sizeof buf, fl)) > 0) send(v, buf, r, 0);
                    map_update(peers, &a->cookie, &b->cookie); map_update(peers, &b->cookie, &a->cookie);
                    while ((r = recv(c, buf, sizeof buf, fl)) > 0) send(v, buf, r, 0);
                    struct epoll_event e1 = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = a};
                    struct epoll_event e2 = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = b};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e1); epoll_ctl(ep, EPOLL_CTL_ADD, v, &e2);
                }
                continue;
            }
            if (s->eof) continue;
            uint32_t e = evs[i].events;
            if (e & (EPOLLERR | EPOLLHUP)) {
                struct side *a = s < s->other ? s : s->other;
                map_delete(peers, &a->cookie); map_delete(peers, &a[1].cookie);
                struct linger lg = {1, 0};
                setsockopt(s->other->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                close(a->fd); close(a[1].fd); a->eof = a[1].eof = 1; // freed lazily: prototype leaks
                continue;
            }
            if (e & EPOLLRDHUP) {
                s->eof = 1;
                shutdown(s->other->fd, SHUT_WR);
                if (s->other->eof) {
                    struct side *a = s < s->other ? s : s->other;
                    map_delete(peers, &a->cookie); map_delete(peers, &a[1].cookie);
                    close(a->fd); close(a[1].fd); free(a);
                }
            }
        }
    }
    return 0;
}
