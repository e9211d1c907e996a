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
    struct Conn *prev, *next, *resume_next;
} Conn;

typedef struct Front {
    PyObject_HEAD
    int epfd, listen_fd, wakefd, in_poll, listening;
    PyObject *handler, *early;
    Py_ssize_t max_head, max_body;
    double head_timeout, body_timeout, idle_timeout;
    Conn *conns; /* every open connection (the list holds a reference) */
    Conn *resume; /* connections with buffered input to look at (each holds a reference) */
    Py_ssize_t n_busy;
} Front;

static PyTypeObject ConnType, FrontType;

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
    if (c->peer_closed && !c->busy && c->in_len == 0) { conn_close(c); return; }
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
    }
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


static void Conn_dealloc(Conn *c) {
    clear_request(c);
    PyMem_Free(c->in);
    PyMem_Free(c->out);
    Py_XDECREF(c->front);
    PyObject_Free(c);
}

static PyMethodDef Conn_methods[] = {
    {"respond", (PyCFunction)Conn_respond, METH_VARARGS,
     "respond(status, body, headers=None): answer the request (headers: list of (bytes, bytes), "
     "content-length is added). Returns False if the client has gone."},
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
                            "body_timeout", "idle_timeout", NULL};
    PyObject *handler, *early;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOnnddd", names, &f->listen_fd, &handler, &early, &f->max_head,
                                     &f->max_body, &f->head_timeout, &f->body_timeout, &f->idle_timeout))
        return -1;
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
    return 0;
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
    Py_RETURN_NONE;
}

static PyObject *Front_sweep(Front *f, PyObject *unused) {
    double t = now();
    Conn *c = f->conns;
    while (c) {
        Conn *next = c->next;
        if (!c->busy && c->waiting != WAIT_NONE && t > c->deadline) {
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
        if (!c->busy && c->in_len == 0 && c->out_len == 0) conn_close(c);
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
    .tp_doc = "Front(listen_fd, handler, early, max_head, max_body, head_timeout, body_timeout, idle_timeout)",
    .tp_methods = Front_methods,
    .tp_getset = Front_getset,
    .tp_init = (initproc)Front_init,
    .tp_new = Front_new,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_front", "lakeloop's compiled HTTP/1.1 front.", -1, NULL};

PyMODINIT_FUNC PyInit__front(void) {
    if (PyType_Ready(&ConnType) < 0 || PyType_Ready(&FrontType) < 0) return NULL;
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
