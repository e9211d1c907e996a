/* lakeloop's compiled HTTP/1.1 front for the model server (module lakeloop.serving._front).
 *
 * It owns the sockets: accepts, reads, parses request heads and bodies (Content-Length or chunked),
 * enforces the limits (head size and time, body size and time, keep-alive idle time), and writes
 * answers. Each complete request is handed to one Python callable,
 * handler(conn, method, path, headers, body, alone), which answers sooner or later with
 * conn.respond(status, body, headers). Everything the V2 protocol means stays in Python.
 *
 * It runs inside the asyncio loop: the loop watches one epoll descriptor (Front.fileno()) and calls
 * Front.poll() when it is readable; poll never blocks. A request whose body will not arrive in the
 * first read (large or chunked) is first shown to early(conn, method, path, headers), which may refuse
 * it (401, 404, 405...) before a byte of the body is buffered.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define LINGER_S 5.0 /* how long a closing connection's late input is still read and dropped */
#define EARLY_BODY 65536 /* bodies larger than this (or chunked) are shown to early() first */
#define IN_BOUND(f) ((size_t)((f)->max_head + (f)->max_body + 2 * READ_CHUNK))
#define TAG_LISTEN ((void *)1)
#define TAG_WAKE ((void *)2)

enum { HEAD, BODY, DISCARD };
enum { WAIT_IDLE, WAIT_HEAD, WAIT_BODY, WAIT_CLOSE, WAIT_NONE };

struct Front;

typedef struct Conn {
    PyObject_HEAD
    struct Front *front;
    int fd, closed, busy, keep_alive, peer_closed, paused, want_out, on_resume, registered;
    int state, waiting, chunked, head_only;
    char *in; size_t in_len, in_cap, scan;
    char *out; size_t out_len, out_cap, out_sent;
    size_t head_len;
    size_t chunk_at, chunk_total; /* a chunked body: where its next unchecked chunk starts, bytes so far */
    Py_ssize_t content_length;
    double deadline;
    PyObject *method, *path, *headers, *body; /* the request being read or handled */
    struct H2 *h2; /* an HTTP/2 connection's state (a Front made with http2=True), else NULL */
    struct Conn *prev, *next, *resume_next;
} Conn;

typedef struct Front {
    PyObject_HEAD
    int epfd, listen_fd, wakefd, in_poll, listening, http2;
    PyObject *handler, *early;
    Py_ssize_t max_head, max_body;
    double head_timeout, body_timeout, idle_timeout;
    Conn *conns; /* every open connection (the list holds a reference) */
    Conn *resume; /* connections with buffered input to look at (each holds a reference) */
    Py_ssize_t n_busy;
    long spin_ns; /* after answering, wait this long for the next event awake (0: sleep in the loop at once) */
} Front;
static int spin_epfd = -1; /* every front's epoll, for spin() */
static int standing_aside; /* background threads at work (stand_aside): no busy polling meanwhile */

static PyTypeObject ConnType, FrontType;
static void h2_advance(Conn *c, int alone);
static void h2_drop_streams(Conn *c);
static int h2_start(Conn *c);
static int h2_busy(Conn *c);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need) cap2 *= 2;
    char *b = PyMem_Realloc(*buf, cap2);
    if (!b) { PyErr_NoMemory(); return -1; }
    *buf = b; *cap = cap2;
    return 0;
}

static void clear_request(Conn *c) {
    Py_CLEAR(c->method); Py_CLEAR(c->path); Py_CLEAR(c->headers); Py_CLEAR(c->body);
}

static void set_wait(Conn *c, int kind) {
    Front *f = c->front;
    c->waiting = kind;
    c->deadline = now() + (kind == WAIT_IDLE ? f->idle_timeout : kind == WAIT_BODY ? f->body_timeout : f->head_timeout);
}

static void conn_close(Conn *c) {
    if (c->closed) return;
    Front *f = c->front;
    c->closed = 1;
    if (c->registered) epoll_ctl(f->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    clear_request(c);
    if (c->h2) h2_drop_streams(c);
    if (c->busy) { c->busy = 0; f->n_busy--; }
    if (c->prev) c->prev->next = c->next; else f->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    Py_DECREF(c); /* the list's reference */
}

/* Watch what the connection waits for; nothing at all once the peer has closed (EPOLLHUP would fire on
 * every poll) or while its input is paused. */
static void update_events(Conn *c) {
    uint32_t events = (c->peer_closed || c->paused ? 0 : EPOLLIN) | (c->want_out ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (events == 0) {
        if (c->registered) { epoll_ctl(c->front->epfd, EPOLL_CTL_DEL, c->fd, NULL); c->registered = 0; }
        return;
    }
    epoll_ctl(c->front->epfd, c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev);
    c->registered = 1;
}

/* The answer is out and the connection ends: stop sending, but read (and drop) what the client still
 * sends until it closes or the deadline passes. Closing at once with unread input would reset the
 * connection, and the client could lose the answer (a slow body still trickling in after its 408). */
static void linger(Conn *c) {
    shutdown(c->fd, SHUT_WR);
    c->state = DISCARD;
    c->waiting = WAIT_CLOSE;
    c->deadline = now() + LINGER_S;
    if (c->paused || c->peer_closed) conn_close(c);
}

/* Send what is pending; 0 when all went, 1 when some waits for EPOLLOUT, -1 when the peer is gone. */
static int flush_out(Conn *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n > 0) { c->out_sent += n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) { c->want_out = 1; update_events(c); }
            return 1;
        }
        return -1;
    }
    c->out_len = c->out_sent = 0;
    if (c->want_out) { c->want_out = 0; update_events(c); }
    return 0;
}

static const char *reason(int status) {
    switch (status) {
    case 100: return "Continue"; case 200: return "OK"; case 201: return "Created"; case 204: return "No Content";
    case 400: return "Bad Request"; case 401: return "Unauthorized"; case 403: return "Forbidden";
    case 404: return "Not Found"; case 405: return "Method Not Allowed"; case 408: return "Request Timeout";
    case 409: return "Conflict"; case 411: return "Length Required"; case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type"; case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests"; case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error"; case 501: return "Not Implemented"; case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

/* Queue one answer (head + body) and try to send it. `extra` is a list of (bytes, bytes) or NULL. */
static int queue_answer(Conn *c, int status, const char *body, Py_ssize_t body_len, PyObject *extra, int closing) {
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n", status, reason(status));
    size_t need = c->out_len + n + 64 + (c->head_only ? 0 : body_len);
    Py_ssize_t count = extra ? PyList_GET_SIZE(extra) : 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(extra, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers must be a list of (bytes, bytes)");
            return -1;
        }
        need += PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)) + PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1)) + 4;
    }
    if (grow(&c->out, &c->out_cap, need) < 0) return -1;
    char *p = c->out + c->out_len;
    memcpy(p, head, n); p += n;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(extra, i);
        PyObject *k = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
        memcpy(p, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)); p += PyBytes_GET_SIZE(k);
        *p++ = ':'; *p++ = ' ';
        memcpy(p, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)); p += PyBytes_GET_SIZE(v);
        *p++ = '\r'; *p++ = '\n';
    }
    p += sprintf(p, "content-length: %zd\r\n%s\r\n", body_len, closing ? "connection: close\r\n" : "");
    if (!c->head_only && body_len) { memcpy(p, body, body_len); p += body_len; }
    c->out_len = p - c->out;
    return 0;
}

static PyObject *JSON_TYPE; /* [(b"content-type", b"application/json")] */

/* 262144 -> "262,144" */
static const char *grouped(Py_ssize_t value, char *out) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%zd", value), j = 0;
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0) out[j++] = ',';
        out[j++] = digits[i];
    }
    out[j] = 0;
    return out;
}

/* An answer the front gives itself (a refused head or body): JSON, then the connection closes. */
static void refuse(Conn *c, int status, const char *message) {
    char body[512];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", message);
    c->head_only = 0;
    if (queue_answer(c, status, body, n, JSON_TYPE, 1) < 0) { PyErr_Clear(); conn_close(c); return; }
    c->keep_alive = 0;
    c->state = DISCARD;
    set_wait(c, WAIT_CLOSE); /* a client that does not read its answer is dropped after head_timeout */
    int sent = flush_out(c);
    if (sent < 0) conn_close(c);
    else if (sent == 0) linger(c);
}

static int tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int token_in(const char *v, size_t len, const char *word) {
    /* a comma-separated header value contains `word` (case-insensitive) */
    size_t wl = strlen(word), i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < len && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e - s == wl && strncasecmp(v + s, word, wl) == 0) return 1;
    }
    return 0;
}

/* Parse a complete head in c->in[0:head_len]. 0: ok, -1: refused (answered), -2: Python error. */
static int parse_head(Conn *c) {
    Front *f = c->front;
    const char *p = c->in, *end = c->in + c->head_len - 2; /* end: the final CRLF */
    while (p < end && (*p == '\r' || *p == '\n')) p++; /* empty lines before a request are allowed */
    const char *m = p;
    while (p < end && tchar(*p)) p++;
    if (p == m || p >= end || *p != ' ') { refuse(c, 400, "malformed request line"); return -1; }
    size_t mlen = p - m;
    const char *t = ++p;
    while (p < end && *p != ' ' && *p != '\r') p++;
    size_t tlen = p - t;
    if (*p != ' ' || tlen == 0 || *t != '/') { refuse(c, 400, "malformed request target"); return -1; }
    p++;
    if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != '\r' ||
        p[9] != '\n') {
        refuse(c, 400, "malformed HTTP version (this server speaks HTTP/1.0 and HTTP/1.1)"); return -1;
    }
    int http11 = p[7] == '1';
    p += 10;
    PyObject *headers = PyDict_New();
    if (!headers) return -2;
    Py_ssize_t content_length = -1;
    int chunked = 0, te = 0, conn_close_h = 0, conn_keep = 0, expect = 0;
    char lower[256];
    while (p < end) {
        const char *n = p;
        while (p < end && tchar(*p)) p++;
        if (p == n || *p != ':' || p - n > 255) { Py_DECREF(headers); refuse(c, 400, "malformed header line"); return -1; }
        size_t nlen = p - n;
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *v = p;
        while (p < end && *p != '\r' && *p != '\n') {
            if ((unsigned char)*p < 0x20 && *p != '\t') { Py_DECREF(headers); refuse(c, 400, "control character in a header"); return -1; }
            p++;
        }
        if (p + 1 > end || p[0] != '\r' || p[1] != '\n') { Py_DECREF(headers); refuse(c, 400, "malformed header line"); return -1; }
        const char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        size_t vlen = ve - v;
        p += 2;
        for (size_t i = 0; i < nlen; i++) lower[i] = (char)((n[i] >= 'A' && n[i] <= 'Z') ? n[i] + 32 : n[i]);
        if (nlen == 14 && memcmp(lower, "content-length", 14) == 0) {
            Py_ssize_t value = 0;
            if (vlen == 0 || vlen > 18) { Py_DECREF(headers); refuse(c, 400, "invalid Content-Length"); return -1; }
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9') { Py_DECREF(headers); refuse(c, 400, "invalid Content-Length"); return -1; }
                value = value * 10 + (v[i] - '0');
            }
            if (content_length >= 0 && content_length != value) {
                Py_DECREF(headers); refuse(c, 400, "conflicting Content-Length headers"); return -1;
            }
            content_length = value;
        } else if (nlen == 17 && memcmp(lower, "transfer-encoding", 17) == 0) {
            te = 1;
            if (vlen == 7 && strncasecmp(v, "chunked", 7) == 0) chunked = 1;
            else { Py_DECREF(headers); refuse(c, 501, "only the chunked transfer coding is supported"); return -1; }
        } else if (nlen == 10 && memcmp(lower, "connection", 10) == 0) {
            conn_close_h |= token_in(v, vlen, "close");
            conn_keep |= token_in(v, vlen, "keep-alive");
        } else if (nlen == 6 && memcmp(lower, "expect", 6) == 0) {
            expect = vlen == 12 && strncasecmp(v, "100-continue", 12) == 0;
        }
        PyObject *key = PyBytes_FromStringAndSize(lower, nlen), *val = PyBytes_FromStringAndSize(v, vlen);
        if (!key || !val || PyDict_SetItem(headers, key, val) < 0) {
            Py_XDECREF(key); Py_XDECREF(val); Py_DECREF(headers); return -2;
        }
        Py_DECREF(key); Py_DECREF(val);
    }
    if (te && content_length >= 0) {
        Py_DECREF(headers); refuse(c, 400, "both Content-Length and Transfer-Encoding: refused (request smuggling)");
        return -1;
    }
    /* the path: up to '?', percent-decoded, UTF-8 */
    size_t plen = 0;
    while (plen < tlen && t[plen] != '?') plen++;
    char *decoded = PyMem_Malloc(plen + 1);
    if (!decoded) { Py_DECREF(headers); PyErr_NoMemory(); return -2; }
    size_t dl = 0;
    for (size_t i = 0; i < plen; i++) {
        int h1, h2;
        if (t[i] == '%' && i + 2 < plen && (h1 = hexval(t[i + 1])) >= 0 && (h2 = hexval(t[i + 2])) >= 0) {
            decoded[dl++] = (char)(h1 * 16 + h2); i += 2;
        } else decoded[dl++] = t[i];
    }
    c->path = PyUnicode_DecodeUTF8(decoded, dl, "replace");
    PyMem_Free(decoded);
    c->method = PyUnicode_DecodeLatin1(m, mlen, NULL);
    if (!c->path || !c->method) { Py_DECREF(headers); return -2; }
    c->headers = headers;
    c->keep_alive = http11 ? !conn_close_h : conn_keep;
    c->head_only = mlen == 4 && memcmp(m, "HEAD", 4) == 0;
    c->chunked = chunked;
    c->chunk_at = c->chunk_total = 0;
    c->content_length = chunked ? 0 : (content_length < 0 ? 0 : content_length);
    if (!chunked && c->content_length > f->max_body) {
        char msg[200], num[40];
        snprintf(msg, sizeof msg, "request body larger than this server's limit of %s bytes "
                 "(lakeloop serve --max-body-bytes): split the batch", grouped(f->max_body, num));
        clear_request(c); refuse(c, 413, msg); return -1;
    }
    size_t have = c->in_len - c->head_len;
    if (chunked || (size_t)c->content_length > have) {
        if ((chunked || c->content_length > EARLY_BODY) && f->early != Py_None) {
            PyObject *r = PyObject_CallFunctionObjArgs(f->early, c->method, c->path, c->headers, NULL);
            if (!r) return -2;
            if (r != Py_None) { /* refused before the body: it is not read, so the connection closes */
                int status; Py_buffer body; PyObject *extra = NULL;
                if (!PyArg_ParseTuple(r, "iy*|O!", &status, &body, &PyList_Type, &extra)) { Py_DECREF(r); return -2; }
                clear_request(c);
                int q = queue_answer(c, status, body.buf, body.len, extra, 1);
                PyBuffer_Release(&body);
                Py_DECREF(r);
                if (q < 0) return -2;
                c->keep_alive = 0;
                c->state = DISCARD;
                set_wait(c, WAIT_CLOSE);
                int sent = flush_out(c);
                if (sent < 0) conn_close(c);
                else if (sent == 0) linger(c);
                return -1;
            }
            Py_DECREF(r);
        }
        if (expect) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (grow(&c->out, &c->out_cap, c->out_len + sizeof cont) < 0) return -2;
            memcpy(c->out + c->out_len, cont, sizeof cont - 1);
            c->out_len += sizeof cont - 1;
            if (flush_out(c) < 0) { conn_close(c); return -1; }
        }
    }
    return 0;
}

/* Decode a chunked body starting at c->in + c->head_len. 1: complete (body set, consumed set), 0: need
 * more, -1: refused, -2: Python error. */
static int chunked_body(Conn *c, size_t *consumed) {
    Front *f = c->front;
    const char *p = c->in + c->head_len, *end = c->in + c->in_len;
    size_t total = c->chunk_total; /* resume after the chunks a previous read already checked */
    const char *scan = p + c->chunk_at, *done = NULL;
    /* first pass: sizes only */
    for (;;) {
        const char *line = scan;
        const char *crlf = NULL;
        for (const char *q = line; q + 1 < end; q++) if (q[0] == '\r' && q[1] == '\n') { crlf = q; break; }
        if (!crlf) { if (end - line > 1024) { refuse(c, 400, "malformed chunk size line"); return -1; } return 0; }
        size_t size = 0; const char *q = line;
        int digits = 0;
        for (; q < crlf && hexval(*q) >= 0; q++, digits++) {
            if (digits >= 15) { refuse(c, 400, "chunk size too large"); return -1; }
            size = size * 16 + hexval(*q);
        }
        if (!digits || (q < crlf && *q != ';' && *q != ' ' && *q != '\t')) { refuse(c, 400, "malformed chunk size line"); return -1; }
        scan = crlf + 2;
        if (size == 0) { /* trailers until an empty line */
            for (;;) {
                const char *e2 = NULL;
                for (const char *r = scan; r + 1 < end; r++) if (r[0] == '\r' && r[1] == '\n') { e2 = r; break; }
                if (!e2) { if (end - scan > f->max_head) { refuse(c, 431, "chunked trailers too large"); return -1; } return 0; }
                int empty = e2 == scan;
                scan = e2 + 2;
                if (empty) break;
            }
            done = scan;
            break;
        }
        total += size;
        if ((Py_ssize_t)total > f->max_body) {
            char msg[200], num[40];
            snprintf(msg, sizeof msg, "request body larger than this server's limit of %s bytes "
                     "(lakeloop serve --max-body-bytes): split the batch", grouped(f->max_body, num));
            clear_request(c); refuse(c, 413, msg); return -1;
        }
        if ((size_t)(end - scan) < size + 2) return 0;
        if (scan[size] != '\r' || scan[size + 1] != '\n') { refuse(c, 400, "malformed chunk"); return -1; }
        scan += size + 2;
        c->chunk_at = (size_t)(scan - p);
        c->chunk_total = total;
    }
    PyObject *body = PyBytes_FromStringAndSize(NULL, total);
    if (!body) return -2;
    char *dst = PyBytes_AS_STRING(body);
    scan = p;
    for (;;) {
        const char *crlf = scan;
        while (!(crlf[0] == '\r' && crlf[1] == '\n')) crlf++;
        size_t size = 0;
        for (const char *q = scan; q < crlf && hexval(*q) >= 0; q++) size = size * 16 + hexval(*q);
        scan = crlf + 2;
        if (size == 0) break;
        memcpy(dst, scan, size); dst += size;
        scan += size + 2;
    }
    c->body = body;
    *consumed = (size_t)(done - c->in);
    return 1;
}

/* Advance the parser. 1: a complete request is in c->method/path/headers/body; 0: need more; -1: the
 * connection was refused or closed; -2: Python error. */
static int parse_one(Conn *c) {
    Front *f = c->front;
    if (c->state == DISCARD) return -1;
    if (c->state == HEAD) {
        if (c->in_len == 0) return 0;
        if (c->waiting == WAIT_IDLE || c->waiting == WAIT_NONE) set_wait(c, WAIT_HEAD);
        char *found = NULL;
        size_t from = c->scan > 3 ? c->scan - 3 : 0;
        size_t limit = c->in_len < (size_t)f->max_head + 4 ? c->in_len : (size_t)f->max_head + 4;
        for (size_t i = from; i + 3 < limit; i++) {
            if (c->in[i] == '\r' && c->in[i + 1] == '\n' && c->in[i + 2] == '\r' && c->in[i + 3] == '\n') {
                found = c->in + i; break;
            }
        }
        if (!found) {
            c->scan = limit;
            if (c->in_len > (size_t)f->max_head) {
                char msg[120];
                snprintf(msg, sizeof msg, "request line and headers larger than %zd bytes", f->max_head);
                refuse(c, 431, msg); return -1;
            }
            return 0;
        }
        c->head_len = found - c->in + 4;
        c->scan = 0;
        int r = parse_head(c);
        if (r < 0) return r;
        c->state = BODY;
        set_wait(c, WAIT_BODY);
    }
    size_t consumed;
    if (c->chunked) {
        int r = chunked_body(c, &consumed);
        if (r <= 0) return r;
    } else {
        if (c->in_len - c->head_len < (size_t)c->content_length) return 0;
        c->body = PyBytes_FromStringAndSize(c->in + c->head_len, c->content_length);
        if (!c->body) return -2;
        consumed = c->head_len + c->content_length;
    }
    memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    if (c->paused && c->in_len <= IN_BOUND(f)) { c->paused = 0; update_events(c); }
    c->state = HEAD;
    c->waiting = WAIT_NONE;
    return 1;
}

static void push_resume(Conn *c) {
    if (c->on_resume || c->closed) return;
    Front *f = c->front;
    c->on_resume = 1;
    Py_INCREF(c);
    c->resume_next = f->resume;
    f->resume = c;
    if (!f->in_poll) {
        uint64_t one = 1;
        ssize_t ignored = write(f->wakefd, &one, sizeof one);
        (void)ignored;
    }
}

/* A Python error in the front's own work (`dispatched`: in the handler): logged; the request, if not
 * answered yet, gets a 500 and the connection ends. */
static void internal_error(Conn *c, int dispatched) {
    PyErr_WriteUnraisable((PyObject *)c);
    if (c->closed || (dispatched && !c->busy)) return;
    if (c->busy) { c->busy = 0; c->front->n_busy--; }
    refuse(c, 500, "internal server error (see the server log)");
}

/* Hand the complete request to Python. */
static void dispatch(Conn *c, int alone) {
    Front *f = c->front;
    c->busy = 1;
    f->n_busy++;
    PyObject *method = c->method, *path = c->path, *headers = c->headers, *body = c->body;
    c->method = c->path = c->headers = c->body = NULL;
    Py_INCREF(c);
    PyObject *r = PyObject_CallFunctionObjArgs(f->handler, (PyObject *)c, method, path, headers, body,
                                               alone ? Py_True : Py_False, NULL);
    Py_DECREF(method); Py_DECREF(path); Py_DECREF(headers); Py_DECREF(body);
    if (!r) internal_error(c, 1);
    else Py_DECREF(r);
    Py_DECREF(c);
}

/* Parse and dispatch what c holds, one request at a time (answers stay in order). */
static void advance(Conn *c, int alone) {
    if (c->h2) { h2_advance(c, alone); return; }
    while (!c->closed && !c->busy && c->out_len == 0) {
        int r = parse_one(c);
        if (r == 1) { dispatch(c, alone && c->front->n_busy == 0); alone = 0; continue; }
        if (r == -2) { internal_error(c, 0); return; }
        if (r == 0 && c->peer_closed) { conn_close(c); return; }
        return;
    }
}

static void on_readable(Conn *c) {
    if (c->state == DISCARD) { /* answered and closing: drop whatever else comes */
        char sink[READ_CHUNK];
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) conn_close(c);
        return;
    }
    if (c->in_len > IN_BOUND(c->front)) { c->paused = 1; update_events(c); return; } /* read on when consumed */
    if (grow(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0) { PyErr_Clear(); conn_close(c); return; }
    ssize_t n = recv(c->fd, c->in + c->in_len, READ_CHUNK, 0);
    if (n > 0) c->in_len += n;
    else if (n == 0) { c->peer_closed = 1; update_events(c); }
    else if (errno == EAGAIN || errno == EINTR) return;
    else { conn_close(c); return; }
    if (c->peer_closed && !c->busy && c->in_len == 0 && !(c->h2 && h2_busy(c))) { conn_close(c); return; }
    push_resume(c);
}

static void on_accept(Front *f) {
    for (int i = 0; i < 64; i++) {
        int fd = accept4(f->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        Conn *c = PyObject_New(Conn, &ConnType);
        if (!c) { PyErr_Clear(); close(fd); return; }
        memset((char *)c + sizeof(PyObject), 0, sizeof(Conn) - sizeof(PyObject));
        c->front = f; Py_INCREF(f);
        c->fd = fd;
        c->state = HEAD;
        set_wait(c, WAIT_HEAD); /* a new connection has head_timeout to send its first request */
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { c->closed = 1; close(fd); Py_DECREF(c); continue; }
        c->registered = 1;
        c->next = f->conns;
        if (f->conns) f->conns->prev = c;
        f->conns = c;
        if (f->http2 && h2_start(c) < 0) { PyErr_Clear(); conn_close(c); }
    }
}

/* ---- HTTP/2, for gRPC (a Front made with http2=True) ----
 *
 * What gRPC's unary calls need of RFC 9113 and RFC 7541 (HPACK), as a server: the preface and
 * SETTINGS, HEADERS and CONTINUATION (decoded with the dynamic table and Huffman strings), DATA with
 * flow control both ways, PING, WINDOW_UPDATE, RST_STREAM and GOAWAY; up to H2_MAX_STREAMS streams a
 * connection. Each complete call (one length-prefixed message, as gRPC frames it) is handed to
 * handler(conn, stream_id, path, headers, message, alone), which answers with
 * conn.respond_grpc(stream_id, status, message or None, detail). The front answers by itself what never
 * reaches Python: a message over max_body (RESOURCE_EXHAUSTED), a compressed or misframed message, a
 * head over max_head, a call not complete within body_timeout (DEADLINE_EXCEEDED), and protocol errors
 * (GOAWAY). A connection with no call for idle_timeout gets a GOAWAY and closes.
 */

#define H2_MAX_STREAMS 100
#define H2_FRAME 16384          /* our SETTINGS_MAX_FRAME_SIZE: the default */
#define H2_TABLE 4096           /* our SETTINGS_HEADER_TABLE_SIZE: the default */
#define H2_OUT_BOUND (1 << 20)  /* input waits while this much output is unsent (a peer that does not read) */
#define H2_DETAIL 2048          /* grpc-message is cut to this many bytes */
#define H2_WINDOW_MAX 0x7fffffffLL
static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum { F_DATA, F_HEADERS, F_PRIORITY, F_RST, F_SETTINGS, F_PUSH, F_PING, F_GOAWAY, F_WINDOW, F_CONTINUATION };
enum { FL_END_STREAM = 1, FL_ACK = 1, FL_END_HEADERS = 4, FL_PADDED = 8, FL_PRIORITY = 0x20 };
enum { E_NO_ERROR = 0, E_PROTOCOL = 1, E_INTERNAL = 2, E_FLOW_CONTROL = 3, E_STREAM_CLOSED = 5, E_FRAME_SIZE = 6,
       E_REFUSED = 7, E_CANCEL = 8, E_COMPRESSION = 9 };
enum { G_DEADLINE_EXCEEDED = 4, G_RESOURCE_EXHAUSTED = 8, G_UNIMPLEMENTED = 12, G_INTERNAL = 13 };

typedef struct Stream {
    uint32_t id;
    int busy;     /* handed to Python and not answered */
    int ended;    /* the client's half is closed (END_STREAM) */
    int answered; /* our answer is queued: its DATA may wait for the client's window */
    double deadline;
    PyObject *path, *headers;
    char *data; size_t len, cap;   /* the DATA received */
    int64_t credit;                /* bytes it took from the connection window, given back when it ends */
    int64_t window;                /* what we may still send on it */
    char *out; size_t out_len, out_off; /* our DATA (the framed message) */
    struct Stream *next;
    size_t trailers_len;
    char trailers[H2_DETAIL * 3 + 128]; /* last: a new stream zeroes only what comes before */
} Stream;

typedef struct { char *name, *value; size_t nlen, vlen; } Entry;

typedef struct H2 {
    int preface, goaway, in_advance, peer_goaway;
    Stream *streams; int n_streams;
    uint32_t last_id;
    uint32_t cont_id; int cont_flags; /* a header block that continues in CONTINUATION frames */
    char *block; size_t block_len, block_cap;
    Entry *table; size_t n_table, table_cap, table_size, table_max; /* HPACK's dynamic table, oldest first */
    char *scratch; size_t scratch_len, scratch_cap;
    int64_t send_window, peer_initial; uint32_t peer_frame;
    int64_t recv_window, recv_max, credit;
} H2;

/* RFC 7541 Appendix B: the HPACK Huffman code of each symbol (0-255, 256 = EOS) and its length in bits. */
static const uint32_t HUFFMAN_CODE[257] = {
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
    0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0,
    0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9,
    0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa,
    0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b,
    0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3,
    0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9,
    0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7,
    0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde,
    0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4,
    0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb,
    0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb,
    0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2,
    0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1,
    0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4,
    0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed,
    0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5,
    0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff
};
static const uint8_t HUFFMAN_BITS[257] = {
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15,
    6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22,
    20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23,
    23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22,
    22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26,
    27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
    26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30
};

/* RFC 7541 Appendix A: the static table (index 1-61). */
static const char *const STATIC_TABLE[61][2] = {
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""}
};

static int16_t HUFFMAN_TREE[256][2]; /* internal nodes; a child < 0 is the leaf of symbol -child - 1 */

static void huffman_build(void) {
    int nodes = 1;
    for (int s = 0; s < 257; s++) {
        int node = 0;
        for (int i = HUFFMAN_BITS[s] - 1; i >= 0; i--) {
            int bit = (HUFFMAN_CODE[s] >> i) & 1;
            if (i == 0) HUFFMAN_TREE[node][bit] = (int16_t)(-s - 1);
            else {
                if (HUFFMAN_TREE[node][bit] == 0) HUFFMAN_TREE[node][bit] = (int16_t)nodes++;
                node = HUFFMAN_TREE[node][bit];
            }
        }
    }
}

static int scratch_room(H2 *h, size_t more) {
    return grow(&h->scratch, &h->scratch_cap, h->scratch_len + more);
}

/* Decode a Huffman string onto the scratch buffer. 0, or -1 for a malformed string. */
static int huffman_decode(H2 *h, const uint8_t *p, size_t len) {
    if (scratch_room(h, len * 8 / 5 + 1) < 0) { PyErr_Clear(); return -1; }
    char *out = h->scratch + h->scratch_len;
    int node = 0, depth = 0, ones = 1;
    for (size_t i = 0; i < len; i++) {
        for (int b = 7; b >= 0; b--) {
            int bit = (p[i] >> b) & 1;
            int next = HUFFMAN_TREE[node][bit];
            if (next < 0) {
                if (next == -257) return -1; /* EOS inside a string */
                *out++ = (char)(-next - 1);
                node = depth = 0; ones = 1;
            } else { node = next; depth++; ones &= bit; }
        }
    }
    if (depth > 7 || !ones) return -1; /* padding: the EOS code's first bits, at most 7 */
    h->scratch_len = out - h->scratch;
    return 0;
}

static int hpack_int(const uint8_t **p, const uint8_t *end, int prefix, uint64_t *out) {
    if (*p >= end) return -1;
    uint64_t max = (1u << prefix) - 1, v = **p & max;
    (*p)++;
    if (v < max) { *out = v; return 0; }
    for (int shift = 0; *p < end && shift <= 28; shift += 7) {
        uint8_t b = *(*p)++;
        v += (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *out = v; return 0; }
    }
    return -1;
}

/* A string literal onto the scratch buffer: its offset and length there. */
static int hpack_string(H2 *h, const uint8_t **p, const uint8_t *end, size_t *off, size_t *len) {
    if (*p >= end) return -1;
    int huffman = **p & 0x80;
    uint64_t n;
    if (hpack_int(p, end, 7, &n) < 0 || n > (uint64_t)(end - *p)) return -1;
    *off = h->scratch_len;
    if (huffman) { if (huffman_decode(h, *p, n) < 0) return -1; }
    else {
        if (scratch_room(h, n) < 0) { PyErr_Clear(); return -1; }
        memcpy(h->scratch + h->scratch_len, *p, n);
        h->scratch_len += n;
    }
    *p += n;
    *len = h->scratch_len - *off;
    return 0;
}

static void table_evict(H2 *h, size_t max) {
    size_t drop = 0;
    while (drop < h->n_table && h->table_size > max) {
        h->table_size -= h->table[drop].nlen + h->table[drop].vlen + 32;
        PyMem_Free(h->table[drop].name);
        drop++;
    }
    memmove(h->table, h->table + drop, (h->n_table - drop) * sizeof(Entry));
    h->n_table -= drop;
}

static int table_add(H2 *h, const char *name, size_t nlen, const char *value, size_t vlen) {
    size_t size = nlen + vlen + 32;
    char *copy = size <= h->table_max ? PyMem_Malloc(nlen + vlen + 1) : NULL;
    if (size <= h->table_max && !copy) return -1;
    if (copy) { memcpy(copy, name, nlen); memcpy(copy + nlen, value, vlen); }
    table_evict(h, size <= h->table_max ? h->table_max - size : 0); /* after the copy: name may be an entry */
    if (!copy) return 0; /* larger than the table: it empties the table and is not kept (RFC 7541, 4.4) */
    if (h->n_table == h->table_cap) {
        size_t cap = h->table_cap ? h->table_cap * 2 : 16;
        Entry *t = PyMem_Realloc(h->table, cap * sizeof(Entry));
        if (!t) { PyMem_Free(copy); return -1; }
        h->table = t; h->table_cap = cap;
    }
    h->table[h->n_table++] = (Entry){copy, copy + nlen, nlen, vlen};
    h->table_size += size;
    return 0;
}

static int table_get(H2 *h, uint64_t index, const char **name, size_t *nlen, const char **value, size_t *vlen) {
    if (index >= 1 && index <= 61) {
        *name = STATIC_TABLE[index - 1][0]; *nlen = strlen(*name);
        *value = STATIC_TABLE[index - 1][1]; *vlen = strlen(*value);
        return 0;
    }
    if (index < 62 || index - 62 >= h->n_table) return -1;
    Entry *e = &h->table[h->n_table - 1 - (index - 62)];
    *name = e->name; *nlen = e->nlen; *value = e->value; *vlen = e->vlen;
    return 0;
}

typedef struct {
    PyObject *headers, *path;
    size_t size, limit; /* the header list's size as RFC 9113 counts it; max_head */
    int post, grpc, regular_seen, bad;
} Head;

/* One decoded field of a request head. -1: a Python error. */
static int on_field(Head *d, const char *n, size_t nl, const char *v, size_t vl) {
    d->size += nl + vl + 32;
    if (nl && n[0] == ':') {
        if (d->regular_seen) d->bad = 1;
        if (nl == 5 && memcmp(n, ":path", 5) == 0) {
            Py_CLEAR(d->path);
            d->path = PyUnicode_DecodeUTF8(v, vl, "replace");
            return d->path ? 0 : -1;
        }
        if (nl == 7 && memcmp(n, ":method", 7) == 0) d->post = vl == 4 && memcmp(v, "POST", 4) == 0;
        else if (!(nl == 7 && memcmp(n, ":scheme", 7) == 0) && !(nl == 10 && memcmp(n, ":authority", 10) == 0))
            d->bad = 1;
        return 0;
    }
    d->regular_seen = 1;
    for (size_t i = 0; i < nl; i++) if (n[i] >= 'A' && n[i] <= 'Z') d->bad = 1; /* HTTP/2 names are lowercase */
    if (nl == 12 && memcmp(n, "content-type", 12) == 0)
        d->grpc = vl >= 16 && memcmp(v, "application/grpc", 16) == 0 && (vl == 16 || v[16] == '+' || v[16] == ';');
    if (d->size > d->limit) return 0; /* refused anyway: keep decoding (the table must stay in step), not keeping */
    PyObject *key = PyBytes_FromStringAndSize(n, nl);
    if (!key) return -1;
    PyObject *old = PyDict_GetItemWithError(d->headers, key), *val;
    if (old) val = PyBytes_FromFormat("%s, %.*s", PyBytes_AS_STRING(old), (int)vl, v); /* repeated: joined */
    else val = PyErr_Occurred() ? NULL : PyBytes_FromStringAndSize(v, vl);
    int r = val ? PyDict_SetItem(d->headers, key, val) : -1;
    Py_DECREF(key); Py_XDECREF(val);
    return r;
}

/* Decode a complete header block. 0; -1: malformed (a COMPRESSION_ERROR); -2: a Python error. */
static int hpack_decode(H2 *h, const uint8_t *p, size_t len, Head *d) {
    const uint8_t *end = p + len;
    int fields = 0;
    while (p < end) {
        h->scratch_len = 0;
        uint8_t b = *p;
        uint64_t index;
        const char *name, *value;
        size_t nlen, vlen, noff = 0, voff;
        if (b & 0x80) { /* indexed field */
            if (hpack_int(&p, end, 7, &index) < 0 || table_get(h, index, &name, &nlen, &value, &vlen) < 0) return -1;
            if (on_field(d, name, nlen, value, vlen) < 0) return -2;
        } else if ((b & 0xe0) == 0x20) { /* dynamic table size update, only before the first field */
            if (fields || hpack_int(&p, end, 5, &index) < 0 || index > H2_TABLE) return -1;
            h->table_max = index;
            table_evict(h, index);
            continue;
        } else { /* a literal: with incremental indexing (01), without (0000) or never indexed (0001) */
            int indexing = (b & 0xc0) == 0x40;
            if (hpack_int(&p, end, indexing ? 6 : 4, &index) < 0) return -1;
            if (index) {
                const char *ignored; size_t ilen;
                if (table_get(h, index, &name, &nlen, &ignored, &ilen) < 0) return -1;
            } else if (hpack_string(h, &p, end, &noff, &nlen) < 0) return -1;
            if (hpack_string(h, &p, end, &voff, &vlen) < 0) return -1;
            if (!index) name = h->scratch + noff;
            value = h->scratch + voff;
            if (on_field(d, name, nlen, value, vlen) < 0) return -2;
            if (indexing && table_add(h, name, nlen, value, vlen) < 0) { PyErr_NoMemory(); return -2; }
        }
        fields++;
    }
    return 0;
}

/* ---- frames out ---- */

static int h2_frame(Conn *c, int type, int flags, uint32_t id, const void *payload, size_t len) {
    if (grow(&c->out, &c->out_cap, c->out_len + 9 + len) < 0) return -1;
    uint8_t *p = (uint8_t *)c->out + c->out_len;
    p[0] = (uint8_t)(len >> 16); p[1] = (uint8_t)(len >> 8); p[2] = (uint8_t)len;
    p[3] = (uint8_t)type; p[4] = (uint8_t)flags;
    p[5] = (uint8_t)(id >> 24) & 0x7f; p[6] = (uint8_t)(id >> 16); p[7] = (uint8_t)(id >> 8); p[8] = (uint8_t)id;
    if (len) memcpy(p + 9, payload, len);
    c->out_len += 9 + len;
    return 0;
}

static void be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static int h2_u32_frame(Conn *c, int type, uint32_t id, uint32_t value) {
    uint8_t b[4];
    be32(b, value);
    return h2_frame(c, type, 0, id, b, 4);
}

/* Send what is queued unless the connection is in the middle of reading (it sends once at the end). */
static void h2_flush(Conn *c) {
    if (c->h2->in_advance || c->closed) return;
    if (flush_out(c) < 0) conn_close(c);
}

static void stream_free(Conn *c, Stream *s) {
    H2 *h = c->h2;
    for (Stream **at = &h->streams; *at; at = &(*at)->next)
        if (*at == s) { *at = s->next; break; }
    h->n_streams--;
    if (s->busy) c->front->n_busy--;
    h->credit += s->credit; /* its DATA no longer counts against the connection window */
    Py_XDECREF(s->path); Py_XDECREF(s->headers);
    PyMem_Free(s->data); PyMem_Free(s->out); PyMem_Free(s);
    if (h->n_streams == 0 && c->waiting == WAIT_NONE) set_wait(c, WAIT_IDLE);
}

static int h2_busy(Conn *c) { return c->h2->n_streams > 0; }

static void h2_drop_streams(Conn *c) {
    while (c->h2->streams) stream_free(c, c->h2->streams);
}

/* Give the connection window back once half of it is used (WINDOW_UPDATE on stream 0). */
static int h2_give_back(Conn *c) {
    H2 *h = c->h2;
    if (h->credit < h->recv_max / 2 || c->state == DISCARD) return 0;
    if (h2_u32_frame(c, F_WINDOW, 0, (uint32_t)h->credit) < 0) return -1;
    h->recv_window += h->credit;
    h->credit = 0;
    return 0;
}

/* A connection error: GOAWAY with the code, then the connection closes. */
static void h2_fail(Conn *c, int code, const char *why) {
    H2 *h = c->h2;
    uint8_t b[8 + 200];
    size_t n = strlen(why) < 200 ? strlen(why) : 200;
    be32(b, h->last_id); be32(b + 4, code);
    memcpy(b + 8, why, n);
    h2_drop_streams(c);
    c->state = DISCARD;
    set_wait(c, WAIT_CLOSE);
    if (h2_frame(c, F_GOAWAY, 0, 0, b, 8 + n) < 0) { PyErr_Clear(); conn_close(c); return; }
    h->in_advance = 0;
    int sent = flush_out(c);
    if (sent < 0) conn_close(c);
    else if (sent == 0) linger(c);
}

/* Closing cleanly: GOAWAY(NO_ERROR) naming the last stream taken, and close once its answers are out. */
static void h2_goaway(Conn *c) {
    H2 *h = c->h2;
    if (!h->goaway) {
        uint8_t b[8];
        be32(b, h->last_id); be32(b + 4, E_NO_ERROR);
        h->goaway = 1;
        if (h2_frame(c, F_GOAWAY, 0, 0, b, 8) < 0) { PyErr_Clear(); conn_close(c); return; }
    }
    if (h->n_streams) return;
    c->state = DISCARD;
    set_wait(c, WAIT_CLOSE);
    if (h->in_advance) return; /* h2_advance ends it */
    int sent = flush_out(c);
    if (sent < 0) conn_close(c);
    else if (sent == 0) linger(c);
}

static const uint8_t RESPONSE_HEAD[] = {0x88, /* :status 200 */
    0x0f, 0x10, 16, 'a', 'p', 'p', 'l', 'i', 'c', 'a', 't', 'i', 'o', 'n', '/', 'g', 'r', 'p', 'c'};

static size_t hpack_put_int(uint8_t *p, int prefix, uint8_t first, uint64_t v) {
    uint64_t max = (1u << prefix) - 1;
    if (v < max) { p[0] = first | (uint8_t)v; return 1; }
    size_t n = 0;
    p[n++] = first | (uint8_t)max;
    v -= max;
    while (v >= 128) { p[n++] = (uint8_t)(v & 0x7f) | 0x80; v >>= 7; }
    p[n++] = (uint8_t)v;
    return n;
}

/* grpc-status and (when there is one) grpc-message, percent-encoded as gRPC says, into s->trailers. */
static void build_trailers(Stream *s, int code, const char *detail, size_t dlen) {
    uint8_t *p = (uint8_t *)s->trailers;
    size_t n = 0;
    char digits[12];
    int dn = snprintf(digits, sizeof digits, "%d", code);
    p[n++] = 0; p[n++] = 11; memcpy(p + n, "grpc-status", 11); n += 11;
    p[n++] = (uint8_t)dn; memcpy(p + n, digits, dn); n += dn;
    if (dlen) {
        static const char hex[] = "0123456789ABCDEF";
        char encoded[H2_DETAIL * 3];
        size_t e = 0;
        if (dlen > H2_DETAIL) dlen = H2_DETAIL;
        for (size_t i = 0; i < dlen; i++) {
            unsigned char ch = (unsigned char)detail[i];
            if (ch >= 0x20 && ch <= 0x7e && ch != '%') encoded[e++] = (char)ch;
            else { encoded[e++] = '%'; encoded[e++] = hex[ch >> 4]; encoded[e++] = hex[ch & 15]; }
        }
        p[n++] = 0; p[n++] = 12; memcpy(p + n, "grpc-message", 12); n += 12;
        n += hpack_put_int(p + n, 7, 0, e);
        memcpy(p + n, encoded, e); n += e;
    }
    s->trailers_len = n;
}

/* Send as much of the stream's answer as the windows allow; its trailers (and the stream's end) after. */
static int h2_pump(Conn *c, Stream *s) {
    H2 *h = c->h2;
    while (s->out_off < s->out_len) {
        int64_t room = s->window < h->send_window ? s->window : h->send_window;
        if (room > h->peer_frame) room = h->peer_frame;
        if (room <= 0) return 0; /* the next WINDOW_UPDATE goes on */
        size_t n = s->out_len - s->out_off < (size_t)room ? s->out_len - s->out_off : (size_t)room;
        if (h2_frame(c, F_DATA, 0, s->id, s->out + s->out_off, n) < 0) return -1;
        s->out_off += n; s->window -= n; h->send_window -= n;
    }
    if (h2_frame(c, F_HEADERS, FL_END_HEADERS | FL_END_STREAM, s->id, s->trailers, s->trailers_len) < 0) return -1;
    if (!s->ended && h2_u32_frame(c, F_RST, s->id, E_NO_ERROR) < 0) return -1; /* we need no more of its DATA */
    stream_free(c, s);
    return 0;
}

/* Answer a stream: with a message (head, DATA, trailers) or trailers only (message NULL). */
static int h2_answer(Conn *c, Stream *s, int code, const char *message, size_t mlen, const char *detail, size_t dlen) {
    build_trailers(s, code, detail, dlen);
    s->answered = 1;
    s->deadline = now() + c->front->body_timeout; /* for a client that never opens its window to the answer */
    if (!message) { /* one HEADERS frame: the response head and the trailers */
        char block[sizeof RESPONSE_HEAD + sizeof s->trailers];
        memcpy(block, RESPONSE_HEAD, sizeof RESPONSE_HEAD);
        memcpy(block + sizeof RESPONSE_HEAD, s->trailers, s->trailers_len);
        s->trailers_len += sizeof RESPONSE_HEAD;
        memcpy(s->trailers, block, s->trailers_len);
        s->out_len = s->out_off = 0;
        return h2_pump(c, s);
    }
    if (h2_frame(c, F_HEADERS, FL_END_HEADERS, s->id, RESPONSE_HEAD, sizeof RESPONSE_HEAD) < 0) return -1;
    s->out = PyMem_Malloc(mlen + 5);
    if (!s->out) { PyErr_NoMemory(); return -1; }
    s->out[0] = 0;
    be32((uint8_t *)s->out + 1, (uint32_t)mlen);
    memcpy(s->out + 5, message, mlen);
    s->out_len = mlen + 5; s->out_off = 0;
    return h2_pump(c, s);
}

/* An HTTP status instead of a gRPC answer (a request that is not gRPC at all), then the stream ends. */
static int h2_http_status(Conn *c, Stream *s, int status) {
    uint8_t block[5] = {0x08, 3}; /* a literal without indexing named :status (static index 8), 3 digits */
    block[2] = (uint8_t)('0' + status / 100);
    block[3] = (uint8_t)('0' + status / 10 % 10);
    block[4] = (uint8_t)('0' + status % 10);
    s->answered = 1;
    if (h2_frame(c, F_HEADERS, FL_END_HEADERS | FL_END_STREAM, s->id, block, sizeof block) < 0) return -1;
    if (!s->ended && h2_u32_frame(c, F_RST, s->id, E_NO_ERROR) < 0) return -1;
    stream_free(c, s);
    return 0;
}

static Stream *stream_find(H2 *h, uint32_t id) {
    for (Stream *s = h->streams; s; s = s->next) if (s->id == id) return s;
    return NULL;
}

/* ---- frames in ---- */

static Stream *stream_new(Conn *c, uint32_t id) {
    H2 *h = c->h2;
    Stream *s = PyMem_Malloc(sizeof(Stream));
    if (!s) { PyErr_NoMemory(); return NULL; }
    memset(s, 0, offsetof(Stream, trailers));
    s->id = id;
    s->window = h->peer_initial;
    s->deadline = now() + c->front->body_timeout;
    s->next = h->streams;
    h->streams = s;
    h->n_streams++;
    c->waiting = WAIT_NONE;
    return s;
}

/* The client's half of a stream is complete: check the gRPC framing and hand the message to Python. */
static int h2_call(Conn *c, Stream *s, int *alone) {
    Front *f = c->front;
    s->ended = 1;
    const uint8_t *d = (const uint8_t *)s->data;
    char why[200];
    if (s->len < 5) {
        if (s->len) snprintf(why, sizeof why, "a truncated gRPC message (%zu bytes, not even its 5-byte prefix)", s->len);
        else snprintf(why, sizeof why, "the call carries no request message");
        return h2_answer(c, s, G_INTERNAL, NULL, 0, why, strlen(why));
    }
    if (d[0] == 1) {
        snprintf(why, sizeof why, "compressed messages are not accepted (grpc-encoding identity only): send it "
                 "uncompressed");
        return h2_answer(c, s, G_UNIMPLEMENTED, NULL, 0, why, strlen(why));
    }
    uint32_t length = get32(d + 1);
    if (d[0] != 0 || length != s->len - 5) {
        snprintf(why, sizeof why, "a malformed gRPC message: its prefix declares %u bytes and %zu follow (one "
                 "message a unary call)", length, s->len - 5);
        return h2_answer(c, s, G_INTERNAL, NULL, 0, why, strlen(why));
    }
    PyObject *message = PyBytes_FromStringAndSize(s->data + 5, length);
    if (!message) return -1;
    PyMem_Free(s->data); s->data = NULL; s->len = s->cap = 0;
    uint32_t sid = s->id;
    PyObject *path = s->path, *headers = s->headers, *id = PyLong_FromUnsignedLong(sid);
    s->path = s->headers = NULL;
    if (!id) { Py_DECREF(path); Py_DECREF(headers); Py_DECREF(message); return -1; }
    s->busy = 1;
    f->n_busy++;
    int was_alone = *alone && f->n_busy == 1;
    *alone = 0;
    Py_INCREF(c);
    PyObject *r = PyObject_CallFunctionObjArgs(f->handler, (PyObject *)c, id, path, headers, message,
                                               was_alone ? Py_True : Py_False, NULL);
    Py_DECREF(id); Py_DECREF(path); Py_DECREF(headers); Py_DECREF(message);
    int q = 0;
    if (!r) { /* logged; the call, if still unanswered, gets INTERNAL */
        PyErr_WriteUnraisable((PyObject *)c);
        Stream *left = c->closed ? NULL : stream_find(c->h2, sid);
        if (left && left->busy) {
            static const char why_internal[] = "internal server error (see the server log)";
            left->busy = 0;
            f->n_busy--;
            q = h2_answer(c, left, G_INTERNAL, NULL, 0, why_internal, sizeof why_internal - 1);
        }
    } else Py_DECREF(r);
    Py_DECREF(c);
    return q;
}

static int h2_headers(Conn *c, uint32_t id, int flags, int *alone) {
    H2 *h = c->h2;
    Front *f = c->front;
    Head d = {PyDict_New(), NULL, 0, (size_t)f->max_head, 0, 0, 0, 0};
    if (!d.headers) return -1;
    int r = hpack_decode(h, (const uint8_t *)h->block, h->block_len, &d);
    h->block_len = 0;
    if (r < 0) {
        Py_DECREF(d.headers); Py_XDECREF(d.path);
        if (r == -2) return -1;
        h2_fail(c, E_COMPRESSION, "malformed header block");
        return -2;
    }
    Stream *s = stream_find(h, id);
    if (s || id <= h->last_id) { /* trailers from the client: they end its half */
        Py_DECREF(d.headers); Py_XDECREF(d.path);
        if (!s) return 0; /* a stream we already answered */
        if (!(flags & FL_END_STREAM)) { /* HEADERS in the middle of a call */
            int q = h2_u32_frame(c, F_RST, id, E_PROTOCOL);
            stream_free(c, s);
            return q;
        }
        if (s->answered) { s->ended = 1; return 0; }
        return h2_call(c, s, alone);
    }
    if (!(id & 1)) { Py_DECREF(d.headers); Py_XDECREF(d.path); h2_fail(c, E_PROTOCOL, "even stream id from a client"); return -2; }
    h->last_id = id;
    if (h->goaway || h->n_streams >= H2_MAX_STREAMS) { /* refused: the client may retry it elsewhere */
        Py_DECREF(d.headers); Py_XDECREF(d.path);
        return h2_u32_frame(c, F_RST, id, E_REFUSED) < 0 ? -1 : 0;
    }
    s = stream_new(c, id);
    if (!s) { Py_DECREF(d.headers); Py_XDECREF(d.path); return -1; }
    s->ended = flags & FL_END_STREAM;
    s->headers = d.headers;
    s->path = d.path;
    if (d.bad || !d.path) {
        Py_DECREF(d.headers); s->headers = NULL;
        int q = h2_u32_frame(c, F_RST, id, E_PROTOCOL);
        stream_free(c, s);
        return q;
    }
    if (!d.post) return h2_http_status(c, s, 405);
    if (!d.grpc) return h2_http_status(c, s, 415);
    if (d.size > (size_t)f->max_head) {
        char why[160], num[40];
        snprintf(why, sizeof why, "request metadata larger than this server's limit of %s bytes", grouped(f->max_head, num));
        return h2_answer(c, s, G_RESOURCE_EXHAUSTED, NULL, 0, why, strlen(why));
    }
    return s->ended ? h2_call(c, s, alone) : 0;
}

static int h2_data(Conn *c, uint32_t id, int flags, const uint8_t *p, size_t len, int *alone) {
    H2 *h = c->h2;
    Front *f = c->front;
    if (id == 0) { h2_fail(c, E_PROTOCOL, "DATA on stream 0"); return -2; }
    h->recv_window -= len;
    if (h->recv_window < 0) { h2_fail(c, E_FLOW_CONTROL, "DATA beyond the connection window"); return -2; }
    Stream *s = stream_find(h, id);
    if (!s || s->ended) {
        h->credit += len; /* a stream answered (or reset) already: its late DATA is dropped */
        if (!s && id > h->last_id) { h2_fail(c, E_PROTOCOL, "DATA on an idle stream"); return -2; }
        return s ? h2_u32_frame(c, F_RST, id, E_STREAM_CLOSED) : 0;
    }
    s->credit += len;
    if (flags & FL_PADDED) {
        if (len == 0 || p[0] >= len) { h2_fail(c, E_PROTOCOL, "padding longer than the frame"); return -2; }
        len -= 1 + p[0]; p++;
    }
    if (!s->answered) {
        if (s->len + len > (size_t)f->max_body + 5) {
            char why[200], num[40];
            snprintf(why, sizeof why, "request message larger than this server's limit of %s bytes (lakeloop serve "
                     "--max-body-bytes): split the batch", grouped(f->max_body, num));
            s->ended = flags & FL_END_STREAM;
            return h2_answer(c, s, G_RESOURCE_EXHAUSTED, NULL, 0, why, strlen(why));
        }
        if (grow(&s->data, &s->cap, s->len + len) < 0) return -1;
        memcpy(s->data + s->len, p, len);
        s->len += len;
    }
    if (flags & FL_END_STREAM) {
        if (s->answered) { s->ended = 1; return 0; }
        return h2_call(c, s, alone);
    }
    return 0;
}

static int h2_settings(Conn *c, int flags, const uint8_t *p, size_t len) {
    H2 *h = c->h2;
    if (flags & FL_ACK) {
        if (len) { h2_fail(c, E_FRAME_SIZE, "SETTINGS ACK with a payload"); return -2; }
        return 0;
    }
    if (len % 6) { h2_fail(c, E_FRAME_SIZE, "SETTINGS of a length not a multiple of 6"); return -2; }
    for (size_t i = 0; i < len; i += 6) {
        unsigned ident = (unsigned)p[i] << 8 | p[i + 1];
        uint32_t value = get32(p + i + 2);
        if (ident == 2 && value > 1) { h2_fail(c, E_PROTOCOL, "SETTINGS_ENABLE_PUSH not 0 or 1"); return -2; }
        if (ident == 4) {
            if (value > H2_WINDOW_MAX) { h2_fail(c, E_FLOW_CONTROL, "SETTINGS_INITIAL_WINDOW_SIZE too large"); return -2; }
            for (Stream *s = h->streams; s; s = s->next) s->window += (int64_t)value - h->peer_initial;
            h->peer_initial = value;
        }
        if (ident == 5) {
            if (value < 16384 || value > 16777215) { h2_fail(c, E_PROTOCOL, "SETTINGS_MAX_FRAME_SIZE out of range"); return -2; }
            h->peer_frame = value;
        }
    }
    if (h2_frame(c, F_SETTINGS, FL_ACK, 0, NULL, 0) < 0) return -1;
    for (Stream *s = h->streams, *next; s; s = next) { next = s->next; if (s->answered && h2_pump(c, s) < 0) return -1; }
    return 0;
}

/* One complete frame. 0: go on; -1: a Python error; -2: the connection failed (GOAWAY sent). */
static int h2_frame_in(Conn *c, int type, int flags, uint32_t id, const uint8_t *p, size_t len, int *alone) {
    H2 *h = c->h2;
    if (h->cont_id && type != F_CONTINUATION) { h2_fail(c, E_PROTOCOL, "a header block interrupted"); return -2; }
    switch (type) {
    case F_DATA: return h2_data(c, id, flags, p, len, alone);
    case F_HEADERS: {
        if (id == 0) { h2_fail(c, E_PROTOCOL, "HEADERS on stream 0"); return -2; }
        size_t pad = 0;
        if (flags & FL_PADDED) {
            if (len == 0) { h2_fail(c, E_PROTOCOL, "padding longer than the frame"); return -2; }
            pad = p[0]; p++; len--;
        }
        if (flags & FL_PRIORITY) {
            if (len < 5) { h2_fail(c, E_FRAME_SIZE, "HEADERS too short for its priority"); return -2; }
            p += 5; len -= 5;
        }
        if (pad > len) { h2_fail(c, E_PROTOCOL, "padding longer than the frame"); return -2; }
        len -= pad;
        if (grow(&h->block, &h->block_cap, len) < 0) return -1;
        memcpy(h->block, p, len);
        h->block_len = len;
        if (!(flags & FL_END_HEADERS)) { h->cont_id = id; h->cont_flags = flags; return 0; }
        return h2_headers(c, id, flags, alone);
    }
    case F_CONTINUATION:
        if (!h->cont_id || id != h->cont_id) { h2_fail(c, E_PROTOCOL, "CONTINUATION without HEADERS"); return -2; }
        if (h->block_len + len > (size_t)c->front->max_head * 2 + H2_FRAME) {
            h2_fail(c, E_PROTOCOL, "header block far larger than this server's limit"); return -2;
        }
        if (grow(&h->block, &h->block_cap, h->block_len + len) < 0) return -1;
        memcpy(h->block + h->block_len, p, len);
        h->block_len += len;
        if (!(flags & FL_END_HEADERS)) return 0;
        h->cont_id = 0;
        return h2_headers(c, id, h->cont_flags, alone);
    case F_PRIORITY:
        if (len != 5) { h2_fail(c, E_FRAME_SIZE, "PRIORITY of a length other than 5"); return -2; }
        return 0;
    case F_RST: {
        if (len != 4 || id == 0) { h2_fail(c, E_PROTOCOL, "malformed RST_STREAM"); return -2; }
        Stream *s = stream_find(h, id);
        if (s) { stream_free(c, s); return 0; } /* cancelled: a later answer goes nowhere */
        if (id > h->last_id) { h2_fail(c, E_PROTOCOL, "RST_STREAM on an idle stream"); return -2; }
        return 0;
    }
    case F_SETTINGS:
        if (id) { h2_fail(c, E_PROTOCOL, "SETTINGS on a stream"); return -2; }
        return h2_settings(c, flags, p, len);
    case F_PING:
        if (len != 8 || id) { h2_fail(c, E_FRAME_SIZE, "malformed PING"); return -2; }
        return (flags & FL_ACK) ? 0 : h2_frame(c, F_PING, FL_ACK, 0, p, 8);
    case F_GOAWAY:
        h->peer_goaway = 1;
        return 0;
    case F_WINDOW: {
        if (len != 4) { h2_fail(c, E_FRAME_SIZE, "WINDOW_UPDATE of a length other than 4"); return -2; }
        uint32_t inc = get32(p) & 0x7fffffff;
        if (id == 0) {
            if (inc == 0 || h->send_window + inc > H2_WINDOW_MAX) { h2_fail(c, E_FLOW_CONTROL, "bad WINDOW_UPDATE"); return -2; }
            h->send_window += inc;
            for (Stream *s = h->streams, *next; s; s = next) { next = s->next; if (s->answered && h2_pump(c, s) < 0) return -1; }
            return 0;
        }
        Stream *s = stream_find(h, id);
        if (!s) return 0;
        s->window += inc;
        return s->answered ? h2_pump(c, s) : 0;
    }
    case F_PUSH: h2_fail(c, E_PROTOCOL, "PUSH_PROMISE from a client"); return -2;
    default: return 0; /* unknown frame types are ignored */
    }
}

static int h2_start(Conn *c) {
    Front *f = c->front;
    H2 *h = PyMem_Calloc(1, sizeof(H2));
    if (!h) return -1;
    c->h2 = h;
    h->send_window = h->peer_initial = 65535;
    h->peer_frame = 16384;
    h->table_max = H2_TABLE;
    int64_t stream_window = (int64_t)f->max_body + 5 + 65536;
    if (stream_window > H2_WINDOW_MAX) stream_window = H2_WINDOW_MAX;
    h->recv_max = 2 * stream_window + (1 << 20);
    if (h->recv_max > H2_WINDOW_MAX) h->recv_max = H2_WINDOW_MAX;
    h->recv_window = h->recv_max;
    uint8_t s[18];
    s[0] = 0; s[1] = 3; be32(s + 2, H2_MAX_STREAMS);          /* SETTINGS_MAX_CONCURRENT_STREAMS */
    s[6] = 0; s[7] = 4; be32(s + 8, (uint32_t)stream_window); /* SETTINGS_INITIAL_WINDOW_SIZE */
    s[12] = 0; s[13] = 6; be32(s + 14, (uint32_t)f->max_head); /* SETTINGS_MAX_HEADER_LIST_SIZE */
    if (h2_frame(c, F_SETTINGS, 0, 0, s, sizeof s) < 0 ||
        h2_u32_frame(c, F_WINDOW, 0, (uint32_t)(h->recv_max - 65535)) < 0) return -1;
    return flush_out(c) < 0 ? -1 : 0;
}

/* Read the frames c holds (after the preface), answering what the front answers itself. */
static void h2_advance(Conn *c, int alone) {
    H2 *h = c->h2;
    size_t at = 0;
    if (!h->preface) {
        size_t n = c->in_len < 24 ? c->in_len : 24;
        if (memcmp(c->in, H2_PREFACE, n) != 0) { conn_close(c); return; } /* not HTTP/2 with prior knowledge */
        if (n < 24) { if (c->peer_closed) conn_close(c); return; }
        h->preface = 1;
        at = 24;
        set_wait(c, WAIT_IDLE);
    }
    h->in_advance = 1;
    int r = 0;
    while (!c->closed && c->state != DISCARD && c->in_len - at >= 9 && c->out_len - c->out_sent <= H2_OUT_BOUND) {
        const uint8_t *p = (const uint8_t *)c->in + at;
        size_t len = (size_t)p[0] << 16 | p[1] << 8 | p[2];
        if (len > H2_FRAME) { h2_fail(c, E_FRAME_SIZE, "frame larger than SETTINGS_MAX_FRAME_SIZE"); r = -2; break; }
        if (c->in_len - at < 9 + len) break;
        r = h2_frame_in(c, p[3], p[4], get32(p + 5) & 0x7fffffff, p + 9, len, &alone);
        at += 9 + len;
        if (r < 0) break;
        if (h2_give_back(c) < 0) { r = -1; break; }
    }
    h->in_advance = 0;
    if (c->closed) return;
    if (r == -1) { PyErr_WriteUnraisable((PyObject *)c); h2_fail(c, E_INTERNAL, "internal error"); return; }
    if (c->state == DISCARD && r == -2) return; /* failed: h2_fail has sent and is closing */
    memmove(c->in, c->in + at, c->in_len - at);
    c->in_len -= at;
    if (c->paused && c->in_len <= IN_BOUND(c->front)) { c->paused = 0; update_events(c); }
    int sent = flush_out(c);
    if (sent < 0) { conn_close(c); return; }
    if (c->state == DISCARD) { if (sent == 0) linger(c); return; } /* a GOAWAY's last answer went */
    if ((c->peer_closed || h->peer_goaway) && h->n_streams == 0) h2_goaway(c); /* the client is done: so are we */
}

/* ---- Conn methods ---- */

static PyObject *Conn_respond(Conn *c, PyObject *args) {
    int status;
    Py_buffer body;
    PyObject *headers = NULL;
    if (!PyArg_ParseTuple(args, "iy*|O!", &status, &body, &PyList_Type, &headers)) return NULL;
    if (c->closed) { PyBuffer_Release(&body); Py_RETURN_FALSE; } /* the client left: nobody to answer */
    if (!c->busy) { PyBuffer_Release(&body); PyErr_SetString(PyExc_RuntimeError, "this request was answered already"); return NULL; }
    int closing = !c->keep_alive || c->peer_closed;
    int r = queue_answer(c, status, body.buf, body.len, headers, closing);
    PyBuffer_Release(&body);
    if (r < 0) return NULL;
    Front *f = c->front;
    c->busy = 0;
    f->n_busy--;
    c->head_only = 0;
    int sent = flush_out(c);
    if (sent < 0) { conn_close(c); Py_RETURN_TRUE; }
    if (sent == 0 && closing) { linger(c); Py_RETURN_TRUE; }
    if (closing) { c->state = DISCARD; set_wait(c, WAIT_CLOSE); Py_RETURN_TRUE; }
    set_wait(c, c->in_len ? WAIT_HEAD : WAIT_IDLE);
    if (c->in_len && sent == 0) push_resume(c);
    Py_RETURN_TRUE;
}


static PyObject *Conn_respond_grpc(Conn *c, PyObject *args) {
    unsigned int id;
    int code;
    PyObject *message;
    Py_buffer detail;
    if (!PyArg_ParseTuple(args, "IiOs*", &id, &code, &message, &detail)) return NULL;
    Py_buffer body = {0};
    if (message != Py_None && PyObject_GetBuffer(message, &body, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&detail); return NULL; }
    PyObject *result = Py_False;
    Stream *s = c->h2 && !c->closed && c->state != DISCARD ? stream_find(c->h2, id) : NULL;
    if (!c->h2) { PyErr_SetString(PyExc_RuntimeError, "respond_grpc on an HTTP/1.1 connection"); result = NULL; }
    else if (s && !s->busy) { PyErr_SetString(PyExc_RuntimeError, "this call was answered already"); result = NULL; }
    else if (s) { /* else the client cancelled the call, or left: nobody to answer */
        s->busy = 0;
        c->front->n_busy--;
        if (h2_answer(c, s, code, message == Py_None ? NULL : body.buf, body.len, detail.buf, detail.len) < 0) result = NULL;
        else {
            result = Py_True;
            H2 *h = c->h2;
            if ((h->goaway || c->peer_closed || h->peer_goaway) && h->n_streams == 0) h2_goaway(c); /* the last answer */
            else h2_flush(c);
        }
    }
    if (message != Py_None) PyBuffer_Release(&body);
    PyBuffer_Release(&detail);
    Py_XINCREF(result);
    return result;
}

/* The front's sweep for an HTTP/2 connection: calls not complete in time, idle connections. */
static void h2_sweep(Conn *c, double t) {
    H2 *h = c->h2;
    if (c->waiting == WAIT_CLOSE || (c->waiting == WAIT_HEAD && !h->preface)) {
        if (t > c->deadline) conn_close(c);
        return;
    }
    for (Stream *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (s->busy || t <= s->deadline) continue;
        if (s->answered) { /* its answer waits on a window the client does not open: dropped */
            if (h2_u32_frame(c, F_RST, s->id, E_CANCEL) < 0) { PyErr_Clear(); conn_close(c); return; }
            stream_free(c, s);
            continue;
        }
        char why[120];
        snprintf(why, sizeof why, "request message not complete within %g s", c->front->body_timeout);
        if (h2_answer(c, s, G_DEADLINE_EXCEEDED, NULL, 0, why, strlen(why)) < 0) { PyErr_Clear(); conn_close(c); return; }
    }
    if (h->n_streams == 0 && c->waiting == WAIT_IDLE && t > c->deadline) h2_goaway(c);
    else h2_flush(c);
}

static void h2_free(H2 *h) {
    if (!h) return;
    for (size_t i = 0; i < h->n_table; i++) PyMem_Free(h->table[i].name);
    PyMem_Free(h->table); PyMem_Free(h->block); PyMem_Free(h->scratch); PyMem_Free(h);
}

static void Conn_dealloc(Conn *c) {
    clear_request(c);
    h2_free(c->h2);
    PyMem_Free(c->in);
    PyMem_Free(c->out);
    Py_XDECREF(c->front);
    PyObject_Free(c);
}

static PyMethodDef Conn_methods[] = {
    {"respond", (PyCFunction)Conn_respond, METH_VARARGS,
     "respond(status, body, headers=None): answer the request (headers: list of (bytes, bytes), "
     "content-length is added). Returns False if the client has gone."},
    {"respond_grpc", (PyCFunction)Conn_respond_grpc, METH_VARARGS,
     "respond_grpc(stream_id, status, message, detail): answer a gRPC call (HTTP/2): a status code and, with "
     "status 0, the serialized response message (bytes), else None and the error's detail (str). Returns "
     "False if the call was cancelled or the client has gone."},
    {NULL}};


static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lakeloop.serving._front.Conn",
    .tp_basicsize = sizeof(Conn),
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One client connection; the handler answers its request with respond().",
    .tp_methods = Conn_methods,
};

/* ---- Front ---- */

static int Front_init(Front *f, PyObject *args, PyObject *kw) {
    static char *names[] = {"listen_fd", "handler", "early", "max_head", "max_body", "head_timeout",
                            "body_timeout", "idle_timeout", "http2", "busy_poll_us", NULL};
    PyObject *handler, *early;
    long busy_poll_us = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOnnddd|pl", names, &f->listen_fd, &handler, &early, &f->max_head,
                                     &f->max_body, &f->head_timeout, &f->body_timeout, &f->idle_timeout, &f->http2,
                                     &busy_poll_us))
        return -1;
    if (busy_poll_us < 0 || busy_poll_us > 1000000) {
        PyErr_SetString(PyExc_ValueError, "busy_poll_us must be between 0 and 1000000");
        return -1;
    }
    f->spin_ns = busy_poll_us * 1000;
    Py_INCREF(handler); f->handler = handler;
    Py_INCREF(early); f->early = early;
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    f->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->epfd < 0 || f->wakefd < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = TAG_LISTEN};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->listen_fd, &ev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    f->listening = 1;
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = TAG_WAKE};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->wakefd, &wev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    if (spin_epfd < 0 && (spin_epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = f};
    if (epoll_ctl(spin_epfd, EPOLL_CTL_ADD, f->epfd, &sev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    return 0;
}

/* Busy polling: a server that sleeps in epoll between two requests of one client pays, on a VM, for the
 * CPU halting and waking again and for cold caches (measured: the same request took ~50 µs in a loop and
 * ~100 µs at one connection). After a poll that answered everything it was given, this waits up to
 * spin_ns for the next event on any front of the process (spin_epfd holds each front's epoll) with the
 * interpreter lock released, then returns to the event loop, which finds the event ready. Nothing handed
 * to Python is waiting (n_busy == 0), so no answer is held up by it; a timer or callback of the loop
 * waits spin_ns at most. While a background thread of the process works (the inference-log writer
 * says so through stand_aside) it does not spin: a spinning thread took the CPU from the writer, which
 * then held the interpreter lock longer, and the p99 of 64-row requests at one connection went from
 * ~1 ms to ~3 ms. */
static void spin(Front *f) {
    struct epoll_event e;
    double deadline = now() + f->spin_ns * 1e-9;
    PyThreadState *ts = PyEval_SaveThread(); /* the process's other threads (the log writer) may run meanwhile */
    while (epoll_wait(spin_epfd, &e, 1, 0) == 0 && now() < deadline) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    PyEval_RestoreThread(ts);
}

static PyObject *Front_poll(Front *f, PyObject *unused) {
    struct epoll_event events[128];
    int n = epoll_wait(f->epfd, events, 128, 0);
    f->in_poll = 1;
    for (int i = 0; i < n; i++) {
        void *tag = events[i].data.ptr;
        if (tag == TAG_LISTEN) { on_accept(f); continue; }
        if (tag == TAG_WAKE) { uint64_t v; ssize_t ignored = read(f->wakefd, &v, sizeof v); (void)ignored; continue; }
        Conn *c = tag;
        if (c->closed) continue;
        Py_INCREF(c);
        if (events[i].events & EPOLLOUT) {
            int r = flush_out(c);
            if (r < 0) conn_close(c);
            else if (r == 0 && c->state == DISCARD) linger(c);
            else if (r == 0 && c->in_len) push_resume(c);
        }
        if (!c->closed && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(c);
        Py_DECREF(c);
    }
    /* the connections with input, most recent first; a request is alone if it is the only one */
    while (f->resume) {
        Conn *list = f->resume;
        f->resume = NULL;
        int count = 0;
        for (Conn *c = list; c; c = c->resume_next) count++;
        while (list) {
            Conn *c = list;
            list = c->resume_next;
            c->on_resume = 0;
            advance(c, count == 1);
            Py_DECREF(c);
        }
    }
    f->in_poll = 0;
    if (f->spin_ns && n > 0 && f->n_busy == 0 && !standing_aside) spin(f);
    Py_RETURN_NONE;
}

static PyObject *Front_sweep(Front *f, PyObject *unused) {
    double t = now();
    Conn *c = f->conns;
    while (c) {
        Conn *next = c->next;
        if (c->h2) h2_sweep(c, t);
        else if (!c->busy && c->waiting != WAIT_NONE && t > c->deadline) {
            char msg[120];
            if (c->waiting == WAIT_IDLE || c->waiting == WAIT_CLOSE) conn_close(c);
            else if (c->waiting == WAIT_HEAD) {
                snprintf(msg, sizeof msg, "request head not complete within %g s", f->head_timeout);
                clear_request(c); refuse(c, 408, msg);
            } else {
                snprintf(msg, sizeof msg, "request body not complete within %g s", f->body_timeout);
                clear_request(c); refuse(c, 408, msg);
            }
        }
        c = next;
    }
    Py_RETURN_NONE;
}

static PyObject *Front_stop_listening(Front *f, PyObject *unused) {
    if (f->listening) { epoll_ctl(f->epfd, EPOLL_CTL_DEL, f->listen_fd, NULL); f->listening = 0; }
    /* idle connections go now; busy ones close after their answer */
    Conn *c = f->conns;
    while (c) {
        Conn *next = c->next;
        if (c->h2) h2_goaway(c);
        else if (!c->busy && c->in_len == 0 && c->out_len == 0) conn_close(c);
        else c->keep_alive = 0;
        c = next;
    }
    Py_RETURN_NONE;
}

static PyObject *Front_close(Front *f, PyObject *unused) {
    while (f->conns) conn_close(f->conns);
    while (f->resume) { Conn *c = f->resume; f->resume = c->resume_next; c->on_resume = 0; Py_DECREF(c); }
    if (f->epfd >= 0) { close(f->epfd); f->epfd = -1; }
    if (f->wakefd >= 0) { close(f->wakefd); f->wakefd = -1; }
    Py_RETURN_NONE;
}

static PyObject *Front_fileno(Front *f, PyObject *unused) { return PyLong_FromLong(f->epfd); }
static PyObject *Front_get_busy(Front *f, void *c) { return PyLong_FromSsize_t(f->n_busy); }

static void Front_dealloc(Front *f) {
    Py_XDECREF(f->handler);
    Py_XDECREF(f->early);
    if (f->epfd > 0) close(f->epfd);
    if (f->wakefd > 0) close(f->wakefd);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *Front_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Front *f = (Front *)type->tp_alloc(type, 0);
    if (f) { f->epfd = f->wakefd = -1; }
    return (PyObject *)f;
}

static PyMethodDef Front_methods[] = {
    {"poll", (PyCFunction)Front_poll, METH_NOARGS, "Handle whatever is ready; never blocks."},
    {"sweep", (PyCFunction)Front_sweep, METH_NOARGS, "Answer 408 to, or close, connections past their deadline."},
    {"stop_listening", (PyCFunction)Front_stop_listening, METH_NOARGS,
     "Accept no more connections; close idle ones, the others after their answer."},
    {"close", (PyCFunction)Front_close, METH_NOARGS, "Close every connection."},
    {"fileno", (PyCFunction)Front_fileno, METH_NOARGS, "The epoll descriptor to watch for readability."},
    {NULL}};

static PyGetSetDef Front_getset[] = {
    {"busy", (getter)Front_get_busy, NULL, "Requests handed to the handler and not answered yet.", NULL},
    {NULL}};

static PyTypeObject FrontType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lakeloop.serving._front.Front",
    .tp_basicsize = sizeof(Front),
    .tp_dealloc = (destructor)Front_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Front(listen_fd, handler, early, max_head, max_body, head_timeout, body_timeout, idle_timeout, "
              "http2=False)",
    .tp_methods = Front_methods,
    .tp_getset = Front_getset,
    .tp_init = (initproc)Front_init,
    .tp_new = Front_new,
};

/* stand_aside(working): a background thread starts (True) or ends (False) a stretch of work; the fronts
 * do no busy polling while any does. */
static PyObject *stand_aside(PyObject *self, PyObject *working) {
    int on = PyObject_IsTrue(working);
    if (on < 0) return NULL;
    standing_aside += on ? 1 : (standing_aside > 0 ? -1 : 0);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"stand_aside", stand_aside, METH_O, "stand_aside(working): no busy polling while a background thread works."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_front", "lakeloop's compiled HTTP/1.1 front.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__front(void) {
    if (PyType_Ready(&ConnType) < 0 || PyType_Ready(&FrontType) < 0) return NULL;
    huffman_build();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    JSON_TYPE = Py_BuildValue("[(y#y#)]", "content-type", (Py_ssize_t)12, "application/json", (Py_ssize_t)16);
    if (!JSON_TYPE) return NULL;
    Py_INCREF(&FrontType);
    if (PyModule_AddObject(m, "Front", (PyObject *)&FrontType) < 0) return NULL;
    Py_INCREF(&ConnType);
    PyModule_AddObject(m, "Conn", (PyObject *)&ConnType);
    return m;
}
