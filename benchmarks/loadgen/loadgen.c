/*
 * loadgen: a single-threaded WebSocket load generator for the wshub benchmarks.
 *
 * One process, one thread, edge-triggered epoll, non-blocking sockets. It does the HTTP upgrade
 * itself, masks every client frame (RFC 6455 5.3), and parses server frames with partial reads,
 * several frames per read, and 7/16/64-bit lengths. It speaks wshub's protocol (JSON envelopes,
 * see shared/PROTOCOL.md) or, with --sio, the same messages as Socket.IO events over engine.io v4.
 *
 * Scenarios (first argument):
 *   fanout    S subscribers + 1 publisher on channel "bench"; the publisher keeps W publications
 *             in flight (a publication leaves the window once it is acked AND, on average, every
 *             subscriber has received it, so a server that acks before delivering cannot queue
 *             without bound). Subscribers are read in batches every --batch-ms (default 2 ms).
 *             Result: deliveries/s to the S subscribers, publications/s.
 *   pingpong  N connections, each with one {"type":"ping"} in flight. Result: round trips/s.
 *   latency   S subscribers + 1 publisher publishing at a fixed --rate per second (open loop);
 *             data carries {"t": <loadgen CLOCK_MONOTONIC ns>}; every subscriber computes
 *             receive - t. Subscribers are read at once (no batching). Result: p50/p90/p99/max ms.
 *   idle      N connections that only wait for `welcome`; prints {"event":"ready"} when all are
 *             up, holds them --hold seconds (answering protocol pings), then exits. Result also
 *             says handshakes_per_s: N / (first connect -> last `welcome`).
 *   chat      N users, one connection each (user u<i>: --tokens FILE gives connection i the JWT
 *             on line i as ?token= and waits for `authenticated`; without it ?user=u<i>), each
 *             keeping --window `chat` messages in flight to random other users. A chat is in
 *             flight until its `chat_received` ack, and all chats sent but neither delivered nor
 *             acked `delivered:false` are at most N x window. Result: deliveries/s (`chat`
 *             frames received by recipients), acks/s.
 *   rooms     --channels C x --per-channel K subscribers (subscriber i on channel "<ch>-<i%C>")
 *             plus --pubs P publishers; publisher k is subscribed to the channels j with
 *             j % P == k and keeps --window publications in flight to random ones of them (in
 *             flight: until acked and, on average, delivered to the K subscribers).
 *             Result: deliveries/s to the subscribers, publications/s.
 * chat and rooms read every connection in the 2 ms batches fanout uses for its subscribers.
 *
 * Every scenario is bounded: connect phase (--connect-timeout), --warmup, then --duration (the
 * measured window); then the process exits by itself. It only ever connects to 127.0.0.1.
 *
 * Output on stdout, one JSON object per line: {"event":"window_start"} and {"event":"window_end"}
 * (so a runner can sample the server's CPU over the same window), {"event":"ready"} for idle,
 * and finally the result line, which includes the load generator's own CPU time (getrusage) and
 * cpu/wall over the window: above ~0.9 the load generator, not the server, may be the limit.
 * Exit status: 0 ok, 2 setup failed (the result line says why), 1 usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                              */

enum scenario { SC_FANOUT, SC_PINGPONG, SC_LATENCY, SC_IDLE, SC_CHAT, SC_ROOMS };

static struct {
    enum scenario sc;
    const char *sc_name;
    int port;
    const char *path;
    const char *token;
    const char *tokens_file; /* chat: one JWT per line, line i for user u<i> */
    const char *channel;
    int sio;
    int subs;          /* fanout, latency */
    int conns;         /* pingpong, idle */
    int window;        /* fanout, rooms: publications in flight (rooms: per publisher); chat:
                          chats in flight per user */
    int channels, per_channel, pubs; /* rooms */
    double rate;       /* latency: publications per second */
    double warmup, duration, hold, connect_timeout;
    double batch_ms;   /* fanout subscribers' read batching; 0 = read at once */
    int concurrency;   /* handshakes in progress at once */
} cfg = {
    .port = 0, .path = NULL, .token = NULL, .channel = "bench", .sio = 0,
    .subs = 100, .conns = 100, .window = 64, .rate = 10.0,
    .channels = 2000, .per_channel = 5, .pubs = 20,
    .warmup = 1.0, .duration = 4.0, .hold = 2.0, .connect_timeout = 60.0,
    .batch_ms = 2.0, .concurrency = 128,
};

/* ------------------------------------------------------------------------------------------ */
/* time, output                                                                               */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* own CPU time (user + system), and the system part */
static double cpu_seconds(double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *sys = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + *sys;
}

static void emit_event(const char *ev) {
    printf("{\"event\":\"%s\"}\n", ev);
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* connections                                                                                */

enum cstate { ST_IDLE, ST_CONNECTING, ST_HS_SENT, ST_OPEN, ST_DEAD };
enum role { R_SUB, R_PUB, R_PINGER, R_IDLE, R_CHAT };

typedef struct conn {
    int fd;
    uint8_t state, role;
    uint8_t got_welcome, got_sio_connect, ready, subscribe_sent;
    uint8_t in_ready_list; /* batched: readable, waiting for the next batch */
    uint8_t got_auth;      /* chat with tokens: `authenticated` seen */
    int32_t arg;           /* chat: user number; rooms: subscriber's channel / publisher number */
    int32_t inflight;      /* chat: chats not acked yet; rooms publisher: publications not acked */
    int32_t pending_subs;  /* rooms publisher: `subscribed` still to come */
    char *part;            /* bytes received but not consumed yet (partial frame / HTTP head) */
    uint32_t plen, pcap;
    char *wbuf;            /* bytes not written yet (socket buffer full) */
    uint32_t wlen, wcap;
} conn;

static conn *conns;
static int nconns;
static int epfd;

/* counters (monotonic; the window is measured by snapshots) */
static uint64_t c_deliveries, c_delivery_bytes, c_pub_self, c_acks, c_pubs_sent, c_pongs,
    c_errors, c_closed, c_failed, c_chat_undelivered;
/* chat tokens (one per user), read from --tokens */
static char **tokens;
static int ntokens;
/* rooms: the first n_first connections are subscribers, the publishers follow */
static int n_first;
static char first_error[256];
static int n_ready, n_started, n_setup_inflight;

/* latency samples (ns) */
static uint64_t *lat;
static size_t lat_n, lat_cap;

static enum { PH_SETUP, PH_WARMUP, PH_WINDOW, PH_HOLD, PH_DONE } phase = PH_SETUP;

/* ready list for batched reads */
static int *ready_list;
static int ready_n;

/* shared receive buffer: [leftover of the connection][new bytes] */
static char *gbuf;
static size_t gcap;

static void note_error(const char *what, const char *p, size_t n) {
    c_errors++;
    if (!first_error[0]) {
        size_t k = 0, w = strlen(what);
        if (w > 60) w = 60;
        memcpy(first_error, what, w);
        k = w;
        for (size_t i = 0; i < n && k < sizeof first_error - 1; i++) {
            char ch = p[i];
            /* keep the JSON result line valid */
            first_error[k++] = (ch == '"' || ch == '\\' || (unsigned char)ch < 0x20) ? '\'' : ch;
        }
        first_error[k] = 0;
    }
}

static void conn_kill(conn *c, int closed_by_peer) {
    if (c->state == ST_DEAD) return;
    int was_setup = !c->ready;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = ST_DEAD;
    c->wlen = 0;
    if (was_setup) {
        c_failed++;
        n_setup_inflight--;
    } else if (closed_by_peer) {
        c_closed++;
    }
}

static void wbuf_append(conn *c, const char *p, size_t n) {
    if (c->wlen + n > c->wcap) {
        uint32_t cap = c->wcap ? c->wcap : 1024;
        while (cap < c->wlen + n) cap *= 2;
        c->wbuf = realloc(c->wbuf, cap);
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += (uint32_t)n;
}

static void conn_flush(conn *c) {
    size_t off = 0;
    while (off < c->wlen) {
        ssize_t k = send(c->fd, c->wbuf + off, c->wlen - off, MSG_NOSIGNAL);
        if (k > 0) { off += (size_t)k; continue; }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_kill(c, 1);
        return;
    }
    if (off) {
        memmove(c->wbuf, c->wbuf + off, c->wlen - off);
        c->wlen -= (uint32_t)off;
    }
}

static void conn_write(conn *c, const char *p, size_t n) {
    if (c->state == ST_DEAD) return;
    if (c->wlen) { wbuf_append(c, p, n); conn_flush(c); return; }
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(c->fd, p + off, n - off, MSG_NOSIGNAL);
        if (k > 0) { off += (size_t)k; continue; }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_kill(c, 1);
        return;
    }
    if (off < n) wbuf_append(c, p + off, n - off); /* EPOLLOUT (edge) will flush it */
}

/* xorshift: masking keys need not be cryptographic for a load generator talking to itself */
static uint32_t rng_state = 0x9e3779b9u;
static inline uint32_t rnd32(void) {
    uint32_t x = rng_state;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return rng_state = x;
}

/* one masked client frame (FIN set) */
static void ws_send(conn *c, int opcode, const char *p, size_t n) {
    char stackbuf[512];
    size_t hdr = n < 126 ? 6 : (n < 65536 ? 8 : 14);
    char *f = hdr + n <= sizeof stackbuf ? stackbuf : malloc(hdr + n);
    f[0] = (char)(0x80 | opcode);
    if (n < 126) {
        f[1] = (char)(0x80 | n);
    } else if (n < 65536) {
        f[1] = (char)(0x80 | 126);
        f[2] = (char)(n >> 8); f[3] = (char)n;
    } else {
        f[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) f[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t key = rnd32();
    unsigned char m[4] = {(unsigned char)(key >> 24), (unsigned char)(key >> 16),
                          (unsigned char)(key >> 8), (unsigned char)key};
    memcpy(f + hdr - 4, m, 4);
    for (size_t i = 0; i < n; i++) f[hdr + i] = (char)(p[i] ^ m[i & 3]);
    conn_write(c, f, hdr + n);
    if (f != stackbuf) free(f);
}

static void ws_text(conn *c, const char *p, size_t n) { ws_send(c, 0x1, p, n); }

/* An application message: a JSON envelope, or a Socket.IO event `42["name",payload]`. */
static void send_msg(conn *c, const char *type, const char *payload_json) {
    char buf[512];
    int n;
    if (cfg.sio) {
        if (payload_json) n = snprintf(buf, sizeof buf, "42[\"%s\",%s]", type, payload_json);
        else n = snprintf(buf, sizeof buf, "42[\"%s\"]", type);
    } else {
        if (payload_json) n = snprintf(buf, sizeof buf, "{\"type\":\"%s\",\"payload\":%s}", type, payload_json);
        else n = snprintf(buf, sizeof buf, "{\"type\":\"%s\"}", type);
    }
    ws_text(c, buf, (size_t)n);
}

static void send_subscribe_to(conn *c, int room) {
    char p[200];
    if (room < 0) snprintf(p, sizeof p, "{\"channel\":\"%s\"}", cfg.channel);
    else snprintf(p, sizeof p, "{\"channel\":\"%s-%d\"}", cfg.channel, room);
    send_msg(c, "subscribe", p);
}

static void send_subscribe(conn *c) {
    c->subscribe_sent = 1;
    if (cfg.sc != SC_ROOMS) { send_subscribe_to(c, -1); return; }
    if (c->role == R_SUB) { send_subscribe_to(c, c->arg); return; }
    /* a rooms publisher: every channel j with j % pubs == its number */
    c->pending_subs = 0;
    for (int j = c->arg; j < cfg.channels; j += cfg.pubs) c->pending_subs++;
    for (int j = c->arg; j < cfg.channels; j += cfg.pubs) send_subscribe_to(c, j);
}

static void send_publish(conn *c) {
    char p[200];
    /* latency: the send time, read back by each subscriber; fanout: a short sequence number */
    if (cfg.sc == SC_LATENCY)
        snprintf(p, sizeof p, "{\"channel\":\"%s\",\"data\":{\"t\":%llu}}", cfg.channel,
                 (unsigned long long)now_ns());
    else
        snprintf(p, sizeof p, "{\"channel\":\"%s\",\"data\":{\"n\":%llu}}", cfg.channel,
                 (unsigned long long)c_pubs_sent);
    send_msg(c, "publish", p);
    c_pubs_sent++;
}

static void send_ping(conn *c) { send_msg(c, "ping", NULL); }

static uint64_t c_chats_sent, c_chat_acks;

/* chat: to a random other user */
static void send_chat(conn *c) {
    char p[200];
    int to = (int)(rnd32() % (uint32_t)(nconns - 1));
    if (to >= c->arg) to++;
    snprintf(p, sizeof p, "{\"recipientId\":\"u%d\",\"message\":\"hello from u%d, %llu\"}", to,
             c->arg, (unsigned long long)c_chats_sent);
    send_msg(c, "chat", p);
    c->inflight++;
    c_chats_sent++;
}

/* rooms: to a random channel of this publisher's */
static void send_room_publish(conn *c) {
    char p[200];
    int mine = (cfg.channels - c->arg + cfg.pubs - 1) / cfg.pubs;
    int j = c->arg + cfg.pubs * (int)(rnd32() % (uint32_t)mine);
    snprintf(p, sizeof p, "{\"channel\":\"%s-%d\",\"data\":{\"n\":%llu}}", cfg.channel, j,
             (unsigned long long)c_pubs_sent);
    send_msg(c, "publish", p);
    c->inflight++;
    c_pubs_sent++;
}

/* ------------------------------------------------------------------------------------------ */
/* connect / handshake                                                                        */

static struct sockaddr_in server_addr;

static void conn_start(int i) {
    conn *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
    n_setup_inflight++;
    int r = connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (r < 0 && errno != EINPROGRESS) conn_kill(c, 0);
}

static void send_upgrade(conn *c) {
    char req[2048];
    char path[1200];
    const char *base = cfg.path;
    const char *sep = strchr(base, '?') ? "&" : "?";
    if (c->role == R_PUB && cfg.token)
        snprintf(path, sizeof path, "%s%stoken=%s", base, sep, cfg.token);
    else if (c->role == R_CHAT && tokens)
        snprintf(path, sizeof path, "%s%stoken=%s", base, sep, tokens[c->arg]);
    else if (c->role == R_CHAT)
        snprintf(path, sizeof path, "%s%suser=u%d", base, sep, c->arg);
    else
        snprintf(path, sizeof path, "%s", base);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n",
                     path, cfg.port);
    c->state = ST_HS_SENT;
    conn_write(c, req, (size_t)n);
}

static void setup_done(conn *c) {
    if (c->ready) return;
    c->ready = 1;
    n_ready++;
    n_setup_inflight--;
}

/* welcome (and, with --sio, the Socket.IO CONNECT) seen: the connection is up */
static void on_up(conn *c) {
    if (!c->got_welcome || (cfg.sio && !c->got_sio_connect)) return;
    if ((c->role == R_SUB || c->role == R_PUB) && !c->subscribe_sent) send_subscribe(c);
    else if (c->role == R_PINGER || c->role == R_IDLE) setup_done(c);
    else if (c->role == R_CHAT && (!tokens || c->got_auth)) setup_done(c);
}

/* ------------------------------------------------------------------------------------------ */
/* incoming messages                                                                          */

enum kind { K_OTHER, K_WELCOME, K_SUBSCRIBED, K_MESSAGE, K_PUBLISHED, K_PONG, K_ERROR, K_CHAT,
            K_CHAT_RECEIVED, K_AUTHENTICATED };

static enum kind kind_of(const char *name, size_t n) {
#define IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
    if (IS("message")) return K_MESSAGE;
    if (IS("published")) return K_PUBLISHED;
    if (IS("pong")) return K_PONG;
    if (IS("welcome")) return K_WELCOME;
    if (IS("subscribed")) return K_SUBSCRIBED;
    if (IS("error")) return K_ERROR;
    if (IS("chat")) return K_CHAT;
    if (IS("chat_received")) return K_CHAT_RECEIVED;
    if (IS("authenticated")) return K_AUTHENTICATED;
    return K_OTHER;
#undef IS
}

/* the string value of the first "type" key of a JSON object, without a full parse */
static enum kind json_type(const char *p, size_t n) {
    static const char fast[] = "{\"type\":\"message\"";
    if (n >= sizeof fast - 1 && memcmp(p, fast, sizeof fast - 1) == 0) return K_MESSAGE;
    const char *k = memmem(p, n, "\"type\"", 6);
    if (!k) return K_OTHER;
    const char *e = p + n, *q = k + 6;
    while (q < e && (*q == ' ' || *q == ':' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    if (q >= e || *q != '"') return K_OTHER;
    const char *s = ++q;
    while (q < e && *q != '"') q++;
    return kind_of(s, (size_t)(q - s));
}

/* the integer after the key "t" (the publish time we put into data) */
static int find_t(const char *p, size_t n, uint64_t *out) {
    const char *e = p + n, *q = p;
    while ((q = memmem(q, (size_t)(e - q), "\"t\"", 3)) != NULL) {
        q += 3;
        while (q < e && (*q == ' ' || *q == '\t')) q++;
        if (q < e && *q == ':') {
            q++;
            while (q < e && (*q == ' ' || *q == '\t')) q++;
            uint64_t v = 0;
            int digits = 0;
            while (q < e && *q >= '0' && *q <= '9') { v = v * 10 + (uint64_t)(*q - '0'); q++; digits++; }
            if (digits) { *out = v; return 1; }
        }
    }
    return 0;
}

static conn *publisher;
static void pump_publisher(void);

static void on_message(conn *c, const char *p, size_t n) {
    if (c->role != R_SUB) { c_pub_self++; return; }
    c_deliveries++;
    c_delivery_bytes += n;
    if (cfg.sc == SC_LATENCY && phase == PH_WINDOW) {
        uint64_t t;
        if (find_t(p, n, &t)) {
            uint64_t now = now_ns();
            if (lat_n == lat_cap) {
                lat_cap = lat_cap ? lat_cap * 2 : 65536;
                lat = realloc(lat, lat_cap * sizeof *lat);
            }
            lat[lat_n++] = now > t ? now - t : 0;
        }
    }
}

static void on_text(conn *c, const char *p, size_t n) {
    enum kind k;
    if (cfg.sio) {
        /* engine.io v4 packet types: 0 open, 2 ping, 3 pong, 4 message; Socket.IO: 0 connect, 2 event */
        if (n == 0) return;
        if (p[0] == '0') { ws_text(c, "40", 2); return; }
        if (p[0] == '2') { ws_text(c, "3", 1); return; }
        if (n < 2 || p[0] != '4') return;
        if (p[1] == '0') { c->got_sio_connect = 1; on_up(c); return; }
        if (p[1] == '4') { note_error("sio connect_error: ", p, n); return; }
        if (p[1] != '2' || n < 5 || p[2] != '[' || p[3] != '"') return;
        const char *s = p + 4, *e = p + n, *q = s;
        while (q < e && *q != '"') q++;
        k = kind_of(s, (size_t)(q - s));
    } else {
        k = json_type(p, n);
    }
    switch (k) {
    case K_MESSAGE: on_message(c, p, n); break;
    case K_PUBLISHED:
        c_acks++;
        if (cfg.sc == SC_FANOUT) pump_publisher();
        if (cfg.sc == SC_ROOMS && c->inflight > 0) c->inflight--; /* topped up after the batch */
        break;
    case K_CHAT:
        if (c->role == R_CHAT) { c_deliveries++; c_delivery_bytes += n; }
        break;
    case K_CHAT_RECEIVED:
        c_chat_acks++;
        if (c->inflight > 0) c->inflight--;
        /* stored for later: never delivered now, so not waited for */
        if (memmem(p, n, "\"delivered\":false", 18) || memmem(p, n, "\"delivered\": false", 19))
            c_chat_undelivered++;
        break;
    case K_AUTHENTICATED:
        c->got_auth = 1;
        if (c->role == R_CHAT && c->got_welcome) on_up(c);
        break;
    case K_PONG:
        c_pongs++;
        if (phase == PH_WARMUP || phase == PH_WINDOW) send_ping(c);
        break;
    case K_WELCOME: c->got_welcome = 1; on_up(c); break;
    case K_SUBSCRIBED:
        if (cfg.sc == SC_ROOMS && c->role == R_PUB) {
            if (--c->pending_subs <= 0) setup_done(c);
        } else {
            setup_done(c);
        }
        break;
    case K_ERROR:
        note_error("", p, n);
        if (!c->ready) conn_kill(c, 0); /* refused during setup: fail now, not at the timeout */
        break;
    default: break;
    }
}

static void on_frame(conn *c, int op, char *p, size_t n) {
    switch (op) {
    case 0x1: on_text(c, p, n); break;
    case 0x8: conn_kill(c, 1); break;          /* close: we never reconnect */
    case 0x9: ws_send(c, 0xA, p, n); break;    /* protocol ping (server heartbeat) -> pong */
    default: break;                            /* continuation, binary, pong */
    }
}

/* consume whole HTTP head / frames from buf; returns bytes used */
static size_t consume(conn *c, char *buf, size_t len) {
    size_t pos = 0;
    if (c->state == ST_HS_SENT) {
        char *end = memmem(buf, len, "\r\n\r\n", 4);
        if (!end) {
            if (len > 16384) conn_kill(c, 1);
            return 0;
        }
        if (len < 12 || memcmp(buf + 9, "101", 3) != 0) {
            char *eol = memchr(buf, '\r', len);
            note_error("handshake refused: ", buf, eol ? (size_t)(eol - buf) : 12);
            conn_kill(c, 1);
            return len;
        }
        c->state = ST_OPEN;
        pos = (size_t)(end + 4 - buf);
    }
    while (c->state == ST_OPEN && pos + 2 <= len) {
        unsigned char b0 = (unsigned char)buf[pos], b1 = (unsigned char)buf[pos + 1];
        uint64_t plen = b1 & 0x7f;
        size_t hdr = 2;
        if (plen == 126) {
            if (pos + 4 > len) break;
            plen = ((uint64_t)(unsigned char)buf[pos + 2] << 8) | (unsigned char)buf[pos + 3];
            hdr = 4;
        } else if (plen == 127) {
            if (pos + 10 > len) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | (unsigned char)buf[pos + 2 + i];
            hdr = 10;
        }
        int masked = b1 & 0x80;
        if (masked) hdr += 4;
        if (pos + hdr + plen > len) break;
        char *payload = buf + pos + hdr;
        if (masked) { /* servers must not mask, but be lenient */
            const char *m = buf + pos + hdr - 4;
            for (uint64_t i = 0; i < plen; i++) payload[i] ^= m[i & 3];
        }
        on_frame(c, b0 & 0x0f, payload, (size_t)plen);
        pos += hdr + (size_t)plen;
    }
    return pos;
}

static void conn_read(conn *c) {
    while (c->state == ST_HS_SENT || c->state == ST_OPEN) {
        if (gcap < (size_t)c->plen + 65536) {
            gcap = (size_t)c->plen + 65536 + gcap;
            gbuf = realloc(gbuf, gcap);
        }
        size_t have = c->plen;
        if (have) memcpy(gbuf, c->part, have);
        size_t room = gcap - have;
        ssize_t k = recv(c->fd, gbuf + have, room, 0);
        if (k > 0) {
            size_t total = have + (size_t)k;
            size_t used = consume(c, gbuf, total);
            size_t left = c->state == ST_DEAD ? 0 : total - used;
            if (left > c->pcap) {
                c->pcap = (uint32_t)(left + 1024);
                c->part = realloc(c->part, c->pcap);
            }
            if (left) memcpy(c->part, gbuf + used, left);
            c->plen = (uint32_t)left;
            /* a short read drained the socket: with edge-triggered epoll, new data brings a new event */
            if ((size_t)k < room) break;
            continue;
        }
        if (k == 0) { conn_kill(c, 1); break; }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) conn_kill(c, 1);
        break;
    }
}

static void on_event(int i, uint32_t events) {
    conn *c = &conns[i];
    if (c->state == ST_DEAD) return;
    if (c->state == ST_CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) { conn_kill(c, 0); return; }
        if (events & EPOLLOUT) {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) { conn_kill(c, 0); return; }
            send_upgrade(c);
        }
        if (!(events & EPOLLIN)) return;
    }
    if ((events & EPOLLOUT) && c->wlen) conn_flush(c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        int batched = cfg.batch_ms > 0 && c->ready && (phase == PH_WARMUP || phase == PH_WINDOW) &&
                      ((cfg.sc == SC_FANOUT && c->role == R_SUB) || cfg.sc == SC_CHAT ||
                       cfg.sc == SC_ROOMS);
        if (batched) {
            if (!c->in_ready_list) { c->in_ready_list = 1; ready_list[ready_n++] = i; }
        } else {
            conn_read(c);
        }
    }
}

static void drain_ready_list(void) {
    for (int j = 0; j < ready_n; j++) {
        conn *c = &conns[ready_list[j]];
        c->in_ready_list = 0;
        conn_read(c);
    }
    ready_n = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* scenarios                                                                                  */

static int nsubs_alive(void) { int k = cfg.subs - (int)c_closed; return k > 0 ? k : 1; }

static void pump_publisher(void) {
    if (!publisher || publisher->state != ST_OPEN) return;
    if (phase != PH_WARMUP && phase != PH_WINDOW) return;
    for (;;) {
        /* in flight until acked and (on average) delivered to every subscriber */
        uint64_t delivered = c_deliveries / (uint64_t)nsubs_alive();
        uint64_t done = c_acks < delivered ? c_acks : delivered;
        if (c_pubs_sent - done >= (uint64_t)cfg.window) break;
        send_publish(publisher);
    }
}

/* chat: top every user up to --window chats in flight, while the chats neither delivered nor
 * acked as stored stay below users x window (a server that acks before delivering cannot make
 * them pile up) */
static void pump_chat(void) {
    if (phase != PH_WARMUP && phase != PH_WINDOW) return;
    uint64_t cap = (uint64_t)nconns * (uint64_t)cfg.window;
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        while (c->inflight < cfg.window) {
            if (c_chats_sent - c_deliveries - c_chat_undelivered >= cap) return;
            send_chat(c);
        }
    }
}

/* rooms: every publisher up to --window, while the publications not yet delivered (on average)
 * to the K subscribers of their channel stay below publishers x window */
static void pump_rooms(void) {
    if (phase != PH_WARMUP && phase != PH_WINDOW) return;
    uint64_t cap = (uint64_t)cfg.pubs * (uint64_t)cfg.window;
    for (int i = n_first; i < nconns; i++) {
        conn *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        while (c->inflight < cfg.window) {
            if (c_pubs_sent - c_deliveries / (uint64_t)cfg.per_channel >= cap) return;
            send_room_publish(c);
        }
    }
}

static void pump(void) {
    if (cfg.sc == SC_FANOUT) pump_publisher();
    else if (cfg.sc == SC_CHAT) pump_chat();
    else if (cfg.sc == SC_ROOMS) pump_rooms();
}

static void read_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(1); }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        if (!n) continue;
        line[n] = 0;
        tokens = realloc(tokens, (size_t)(ntokens + 1) * sizeof *tokens);
        tokens[ntokens++] = strdup(line);
    }
    fclose(f);
}

static double pct(uint64_t *v, size_t n, double q) {
    if (!n) return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen fanout|pingpong|latency|idle|chat|rooms --port P [options]\n"
            "  --path /ws          WebSocket path (--sio: /socket.io/?EIO=4&transport=websocket)\n"
            "  --token JWT         handshake token for the publisher(s) (?token=)\n"
            "  --tokens FILE       chat: one JWT per line, line i for user u<i>\n"
            "  --channel bench     channel name\n"
            "  --sio               Socket.IO v5 / engine.io v4 framing\n"
            "  --subs N            subscribers (fanout, latency)       [100]\n"
            "  --conns N           connections (pingpong, idle), users (chat) [100]\n"
            "  --channels C --per-channel K --pubs P   rooms          [2000, 5, 20]\n"
            "  --window W          in flight: fanout, rooms (per publisher), chat (per user) [64]\n"
            "  --rate R            publications per second (latency)   [10]\n"
            "  --warmup S --duration S   seconds                       [1, 4]\n"
            "  --hold S            idle: seconds to hold after ready   [2]\n"
            "  --batch-ms MS       fanout/chat/rooms read batching     [2]\n"
            "  --concurrency N     handshakes in progress at once      [128]\n"
            "  --connect-timeout S                                     [60]\n");
    exit(1);
}

static void fail_setup(const char *why, uint64_t t0) {
    printf("{\"scenario\":\"%s\",\"ok\":false,\"error\":\"%s\",\"ready\":%d,\"needed\":%d,"
           "\"failed\":%llu,\"setup_s\":%.3f,\"first_error\":\"%s\"}\n",
           cfg.sc_name, why, n_ready, nconns, (unsigned long long)c_failed,
           (double)(now_ns() - t0) / 1e9, first_error);
    fflush(stdout);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    cfg.sc_name = argv[1];
    if (!strcmp(argv[1], "fanout")) cfg.sc = SC_FANOUT;
    else if (!strcmp(argv[1], "pingpong")) cfg.sc = SC_PINGPONG;
    else if (!strcmp(argv[1], "latency")) { cfg.sc = SC_LATENCY; cfg.subs = 1000; }
    else if (!strcmp(argv[1], "idle")) { cfg.sc = SC_IDLE; cfg.conns = 10000; }
    else if (!strcmp(argv[1], "chat")) { cfg.sc = SC_CHAT; cfg.conns = 1000; cfg.window = 4; }
    else if (!strcmp(argv[1], "rooms")) { cfg.sc = SC_ROOMS; cfg.window = 16; }
    else usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
        if (OPT("--port")) cfg.port = atoi(v);
        else if (OPT("--path")) cfg.path = v;
        else if (OPT("--token")) cfg.token = v;
        else if (OPT("--tokens")) cfg.tokens_file = v;
        else if (OPT("--channels")) cfg.channels = atoi(v);
        else if (OPT("--per-channel")) cfg.per_channel = atoi(v);
        else if (OPT("--pubs")) cfg.pubs = atoi(v);
        else if (OPT("--channel")) cfg.channel = v;
        else if (!strcmp(a, "--sio")) cfg.sio = 1;
        else if (OPT("--subs")) cfg.subs = atoi(v);
        else if (OPT("--conns")) cfg.conns = atoi(v);
        else if (OPT("--window")) cfg.window = atoi(v);
        else if (OPT("--rate")) cfg.rate = atof(v);
        else if (OPT("--warmup")) cfg.warmup = atof(v);
        else if (OPT("--duration")) cfg.duration = atof(v);
        else if (OPT("--hold")) cfg.hold = atof(v);
        else if (OPT("--batch-ms")) cfg.batch_ms = atof(v);
        else if (OPT("--concurrency")) cfg.concurrency = atoi(v);
        else if (OPT("--connect-timeout")) cfg.connect_timeout = atof(v);
        else { fprintf(stderr, "unknown option %s\n", a); usage(); }
#undef OPT
    }
    if (cfg.port <= 0 || cfg.port > 65535 || cfg.subs < 1 || cfg.conns < 1 || cfg.window < 1 ||
        cfg.rate <= 0 || cfg.concurrency < 1 || cfg.duration <= 0 || cfg.warmup < 0 ||
        cfg.channels < 1 || cfg.per_channel < 1 || cfg.pubs < 1 || cfg.pubs > cfg.channels ||
        (cfg.sc == SC_CHAT && cfg.conns < 2))
        usage();
    if (cfg.sc == SC_CHAT && cfg.tokens_file) {
        read_tokens(cfg.tokens_file);
        if (ntokens < cfg.conns) {
            fprintf(stderr, "%s: %d tokens for %d users\n", cfg.tokens_file, ntokens, cfg.conns);
            exit(1);
        }
    }
    if (!cfg.path) cfg.path = cfg.sio ? "/socket.io/?EIO=4&transport=websocket" : "/ws";
    signal(SIGPIPE, SIG_IGN);

    /* never anything but loopback */
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)cfg.port);
    server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int with_pub = cfg.sc == SC_FANOUT || cfg.sc == SC_LATENCY;
    if (cfg.sc == SC_ROOMS) {
        n_first = cfg.channels * cfg.per_channel;
        nconns = n_first + cfg.pubs;
    } else {
        nconns = with_pub ? cfg.subs + 1 : cfg.conns;
        n_first = with_pub ? cfg.subs : nconns;
    }
    conns = calloc((size_t)nconns, sizeof *conns);
    ready_list = calloc((size_t)nconns, sizeof *ready_list);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        if (cfg.sc == SC_ROOMS) {
            conns[i].role = i < n_first ? R_SUB : R_PUB;
            conns[i].arg = i < n_first ? i % cfg.channels : i - n_first;
        } else if (cfg.sc == SC_CHAT) {
            conns[i].role = R_CHAT;
            conns[i].arg = i;
        } else {
            conns[i].role = with_pub ? (i < cfg.subs ? R_SUB : R_PUB)
                                     : (cfg.sc == SC_PINGPONG ? R_PINGER : R_IDLE);
        }
    }
    if (with_pub) publisher = &conns[cfg.subs];
    rng_state ^= (uint32_t)now_ns() | 1u;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    enum { MAXEV = 4096 };
    static struct epoll_event evs[MAXEV];

    uint64_t t_start = now_ns();
    uint64_t setup_deadline = t_start + (uint64_t)(cfg.connect_timeout * 1e9);
    uint64_t t_setup_done = 0, t_win0 = 0, t_win1 = 0, t_phase_end = 0, t_next_pub = 0, t_next_batch = 0;
    uint64_t batch_ns = (uint64_t)(cfg.batch_ms * 1e6);
    uint64_t pub_ns = (uint64_t)(1e9 / cfg.rate);
    uint64_t s_deliv = 0, s_bytes = 0, s_acks = 0, s_pongs = 0, s_sent = 0;
    uint64_t e_deliv = 0, e_bytes = 0, e_acks = 0, e_pongs = 0, e_sent = 0;
    uint64_t s_csent = 0, s_cacks = 0, s_cund = 0, e_csent = 0, e_cacks = 0, e_cund = 0; /* chat */
    double cpu0 = 0, cpu1 = 0, sys0 = 0, sys1 = 0;

    while (phase != PH_DONE) {
        uint64_t now = now_ns();
        /* ---- phase machine ---- */
        if (phase == PH_SETUP) {
            /* subscribers first, the publisher once they are all in */
            int limit = n_ready < n_first ? n_first : nconns;
            while (n_started < limit && n_setup_inflight < cfg.concurrency) conn_start(n_started++);
            if (c_failed) fail_setup("connections failed during setup", t_start);
            if (now > setup_deadline) fail_setup("connect timeout", t_start);
            if (n_ready == nconns) {
                t_setup_done = now;
                if (cfg.sc == SC_IDLE) {
                    phase = PH_HOLD;
                    t_phase_end = now + (uint64_t)(cfg.hold * 1e9);
                    printf("{\"event\":\"ready\",\"conns\":%d}\n", nconns);
                    fflush(stdout);
                } else {
                    phase = PH_WARMUP;
                    t_phase_end = now + (uint64_t)(cfg.warmup * 1e9);
                    t_next_batch = now + batch_ns;
                    t_next_pub = now;
                    if (cfg.sc == SC_PINGPONG)
                        for (int i = 0; i < nconns; i++) send_ping(&conns[i]);
                    pump();
                }
            }
        } else if (phase == PH_WARMUP && now >= t_phase_end) {
            phase = PH_WINDOW;
            t_win0 = now;
            t_phase_end = now + (uint64_t)(cfg.duration * 1e9);
            s_deliv = c_deliveries; s_bytes = c_delivery_bytes; s_acks = c_acks; s_pongs = c_pongs;
            s_sent = c_pubs_sent;
            s_csent = c_chats_sent; s_cacks = c_chat_acks; s_cund = c_chat_undelivered;
            cpu0 = cpu_seconds(&sys0);
            emit_event("window_start");
        } else if (phase == PH_WINDOW && now >= t_phase_end) {
            drain_ready_list();
            t_win1 = now_ns();
            cpu1 = cpu_seconds(&sys1);
            e_deliv = c_deliveries; e_bytes = c_delivery_bytes; e_acks = c_acks; e_pongs = c_pongs;
            e_sent = c_pubs_sent;
            e_csent = c_chats_sent; e_cacks = c_chat_acks; e_cund = c_chat_undelivered;
            emit_event("window_end");
            phase = PH_DONE;
            break;
        } else if (phase == PH_HOLD && now >= t_phase_end) {
            phase = PH_DONE;
            break;
        }
        if (phase == PH_WARMUP || phase == PH_WINDOW) {
            if (cfg.sc == SC_LATENCY) {
                while (now >= t_next_pub) { send_publish(publisher); t_next_pub += pub_ns; }
            }
        }

        /* ---- wait ---- */
        if ((phase == PH_WARMUP || phase == PH_WINDOW) &&
            (cfg.sc == SC_FANOUT || cfg.sc == SC_CHAT || cfg.sc == SC_ROOMS) && batch_ns) {
            /* Subscribers are read in batches: sleep to the next tick, then harvest everything
             * that became readable meanwhile, read it, and top up the publisher's window. Waking
             * per packet would cost a wakeup and an epoll_wait per delivery. */
            uint64_t wake = t_next_batch < t_phase_end ? t_next_batch : t_phase_end;
            if (wake > now) {
                struct timespec ts = {.tv_sec = (time_t)(wake / 1000000000ull),
                                      .tv_nsec = (long)(wake % 1000000000ull)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
            int n;
            do {
                n = epoll_wait(epfd, evs, MAXEV, 0);
                for (int j = 0; j < n; j++) on_event((int)evs[j].data.u32, evs[j].events);
            } while (n == MAXEV);
            drain_ready_list();
            pump();
            t_next_batch += batch_ns;
            now = now_ns();
            if (t_next_batch < now) t_next_batch = now; /* behind: no sleep, no catch-up burst */
            continue;
        }
        uint64_t wake = phase == PH_SETUP ? now + 50000000ull : t_phase_end;
        if ((phase == PH_WARMUP || phase == PH_WINDOW) && cfg.sc == SC_LATENCY && t_next_pub < wake)
            wake = t_next_pub;
        uint64_t dt = wake > now ? wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(dt / 1000000000ull), .tv_nsec = (long)(dt % 1000000000ull)};
        int n = epoll_pwait2(epfd, evs, MAXEV, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_pwait2");
            return 2;
        }
        for (int j = 0; j < n; j++) on_event((int)evs[j].data.u32, evs[j].events);
    }

    double setup_s = (double)(t_setup_done - t_start) / 1e9;
    printf("{\"scenario\":\"%s\",\"ok\":true,\"sio\":%s,\"setup_s\":%.3f,", cfg.sc_name,
           cfg.sio ? "true" : "false", setup_s);
    if (cfg.sc == SC_IDLE) {
        /* connection set-up rate: first connect -> every `welcome` in */
        printf("\"handshakes_per_s\":%.1f,", setup_s > 0 ? nconns / setup_s : 0.0);
        printf("\"conns\":%d,\"closed\":%llu,\"errors\":%llu,\"first_error\":\"%s\"}\n", nconns,
               (unsigned long long)c_closed, (unsigned long long)c_errors, first_error);
        return 0;
    }
    double win = (double)(t_win1 - t_win0) / 1e9;
    double cpu = cpu1 - cpu0;
    uint64_t deliv = e_deliv - s_deliv;
    printf("\"window_s\":%.3f,\"loadgen_cpu_s\":%.3f,\"loadgen_sys_s\":%.3f,\"loadgen_cpu_ratio\":%.3f,",
           win, cpu, sys1 - sys0, cpu / win);
    if (cfg.sc == SC_PINGPONG) {
        printf("\"conns\":%d,\"round_trips\":%llu,\"round_trips_per_s\":%.1f,", nconns,
               (unsigned long long)(e_pongs - s_pongs), (double)(e_pongs - s_pongs) / win);
    } else if (cfg.sc == SC_CHAT) {
        printf("\"users\":%d,\"window\":%d,\"deliveries\":%llu,\"deliveries_per_s\":%.1f,"
               "\"chats_sent_per_s\":%.1f,\"chat_acks_per_s\":%.1f,\"undelivered\":%llu,"
               "\"frame_bytes\":%.1f,\"tokens\":%s,",
               nconns, cfg.window, (unsigned long long)deliv, (double)deliv / win,
               (double)(e_csent - s_csent) / win, (double)(e_cacks - s_cacks) / win,
               (unsigned long long)(e_cund - s_cund),
               deliv ? (double)(e_bytes - s_bytes) / (double)deliv : 0.0, tokens ? "true" : "false");
    } else if (cfg.sc == SC_ROOMS) {
        printf("\"conns\":%d,\"channels\":%d,\"per_channel\":%d,\"pubs\":%d,\"window\":%d,"
               "\"deliveries\":%llu,\"deliveries_per_s\":%.1f,\"pubs_per_s\":%.1f,"
               "\"pubs_sent_per_s\":%.1f,\"frame_bytes\":%.1f,",
               nconns, cfg.channels, cfg.per_channel, cfg.pubs, cfg.window,
               (unsigned long long)deliv, (double)deliv / win, (double)(e_acks - s_acks) / win,
               (double)(e_sent - s_sent) / win,
               deliv ? (double)(e_bytes - s_bytes) / (double)deliv : 0.0);
    } else {
        printf("\"subs\":%d,\"deliveries\":%llu,\"deliveries_per_s\":%.1f,\"pubs_per_s\":%.1f,"
               "\"pubs_sent_per_s\":%.1f,\"frame_bytes\":%.1f,",
               cfg.subs, (unsigned long long)deliv, (double)deliv / win,
               (double)(e_acks - s_acks) / win, (double)(e_sent - s_sent) / win,
               deliv ? (double)(e_bytes - s_bytes) / (double)deliv : 0.0);
        if (cfg.sc == SC_FANOUT) printf("\"window\":%d,\"batch_ms\":%.2f,", cfg.window, cfg.batch_ms);
        if (cfg.sc == SC_LATENCY) {
            qsort(lat, lat_n, sizeof *lat, cmp_u64);
            /* publications sent in the window whose deliveries never arrived show up as missing */
            double expected = (double)(e_sent - s_sent) * cfg.subs;
            printf("\"rate\":%.1f,\"samples\":%zu,\"expected_samples\":%.0f,\"p50_ms\":%.3f,"
                   "\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,",
                   cfg.rate, lat_n, expected, pct(lat, lat_n, 0.50), pct(lat, lat_n, 0.90),
                   pct(lat, lat_n, 0.99), pct(lat, lat_n, 0.999), lat_n ? (double)lat[lat_n - 1] / 1e6 : 0.0);
        }
    }
    printf("\"closed\":%llu,\"errors\":%llu,\"first_error\":\"%s\"}\n", (unsigned long long)c_closed,
           (unsigned long long)c_errors, first_error);
    return 0;
}
