/* The V2 request's inputs as numpy arrays, compiled: the fast path of lakeloop.serving._protocol.parse.
 *
 * inputs(tensors, table, names, body, start, max_string_bytes, max_batch) takes the request's parsed
 * "inputs" list (orjson's objects), the model's inputs (table: name -> (index, code, shape, column,
 * nullable, datatype); names: the model's order) and the body (bytes) with the offset where its binary
 * tensor data starts (len(body) when there is none), and returns ({name: array} in the model's order,
 * rows) — or None for anything it does not take as it stands. It accepts only requests that the
 * Python parser accepts, with the same arrays: a None sends the request through the Python parser,
 * which then either takes it (a nested case this code leaves out, FP16 from JSON) or raises the
 * V2Error naming what is wrong. So every error message has one source, and this file has no
 * messages at all. tests/serving/test_tensors.py runs both parsers on the same requests.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <Python.h>
#include <numpy/arrayobject.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { BOOL_, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64, BYTES_, CODES };
static const int TYPENUM[CODES] = {NPY_BOOL, NPY_UINT8, NPY_UINT16, NPY_UINT32, NPY_UINT64, NPY_INT8, NPY_INT16,
                                   NPY_INT32, NPY_INT64, NPY_FLOAT16, NPY_FLOAT32, NPY_FLOAT64, NPY_OBJECT};
static const int SIZE[CODES] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8, 0};
#define MAX_DIMS 16
#define MAX_INPUTS 512
#define EXACT_INT (1LL << 53) /* an int converts to a float exactly up to here; beyond, Python decides */

static PyObject *k_name, *k_datatype, *k_shape, *k_parameters, *k_data, *k_size, *k_shm[3], *k_empty;

typedef struct {
    int code, column, nullable, free_batch, rank;
    npy_intp declared[MAX_DIMS];
    PyObject *datatype;
} Spec;

/* The spec tuple (index, code, shape, column, nullable, datatype); 0 when it is not one. */
static int read_spec(PyObject *tuple, Py_ssize_t *index, Spec *spec) {
    if (!PyTuple_CheckExact(tuple) || PyTuple_GET_SIZE(tuple) != 6) return 0;
    *index = PyLong_AsSsize_t(PyTuple_GET_ITEM(tuple, 0));
    spec->code = (int)PyLong_AsLong(PyTuple_GET_ITEM(tuple, 1));
    PyObject *shape = PyTuple_GET_ITEM(tuple, 2);
    spec->column = PyObject_IsTrue(PyTuple_GET_ITEM(tuple, 3));
    spec->nullable = PyObject_IsTrue(PyTuple_GET_ITEM(tuple, 4));
    spec->datatype = PyTuple_GET_ITEM(tuple, 5);
    if (PyErr_Occurred() || spec->code < 0 || spec->code >= CODES || !PyTuple_CheckExact(shape)
        || PyTuple_GET_SIZE(shape) > MAX_DIMS) {
        PyErr_Clear();
        return 0;
    }
    spec->rank = (int)PyTuple_GET_SIZE(shape);
    for (int i = 0; i < spec->rank; i++) spec->declared[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
    spec->free_batch = spec->rank > 0 && spec->declared[0] == -1;
    return !PyErr_Occurred();
}

static int check_shape(const Spec *spec, npy_intp *dims, int n);

/* The number of elements of a shape; -1 past 2^40. */
static npy_intp count_of(const npy_intp *dims, int nd) {
    npy_intp count = 1;
    for (int i = 0; i < nd; i++) {
        if (count > ((npy_intp)1 << 40) / dims[i]) return -1;
        count *= dims[i];
    }
    return count;
}

/* The client's shape checked against the declared one ([N] for a column is [N, 1]); its rank, or -1. */
static int read_shape(PyObject *shape, const Spec *spec, npy_intp *dims) {
    if (!shape || !PyList_CheckExact(shape)) return -1;
    Py_ssize_t n = PyList_GET_SIZE(shape);
    if (n < 1 || n > MAX_DIMS) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyList_GET_ITEM(shape, i);
        if (!PyLong_CheckExact(d)) return -1;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(d, &overflow);
        if (overflow || v < 1 || v > ((long long)1 << 40)) return -1;
        dims[i] = (npy_intp)v;
    }
    return check_shape(spec, dims, (int)n);
}

/* dims[0:n] (each 1..2^40) against the declared shape; the rank, or -1. */
static int check_shape(const Spec *spec, npy_intp *dims, int n) {
    if (spec->column && n == 1) {
        dims[1] = 1;
        return 2;
    }
    if (n != spec->rank) return -1;
    for (int i = 0; i < n; i++)
        if (spec->declared[i] != -1 && dims[i] != spec->declared[i]) return -1;
    return (int)n;
}

/* ---- JSON data ------------------------------------------------------------------------------------ */

typedef struct {
    const Spec *spec;
    char *out;        /* numeric: the array's data */
    PyObject **objs;  /* BYTES: the array's elements */
    npy_intp at, count;
    Py_ssize_t max_string;
} Fill;

static int int_in(PyObject *v, long long lo, long long hi, long long *got) {
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *got = x;
    return x >= lo && x <= hi;
}

/* One JSON value into element `f->at`; 0 when the Python parser must judge it. */
static int put(Fill *f, PyObject *v) {
    const Spec *s = f->spec;
    npy_intp i = f->at++;
    if (i >= f->count) return 0;
    long long x;
    switch (s->code) {
    case BYTES_:
        if (v == Py_None && s->nullable) v = k_empty;
        if (!PyUnicode_CheckExact(v)) return 0;
        if (PyUnicode_GET_LENGTH(v) * 4 > f->max_string) {
            Py_ssize_t size;
            if (!PyUnicode_AsUTF8AndSize(v, &size)) {
                PyErr_Clear();
                return 0;
            }
            if (size > f->max_string) return 0;
        }
        Py_INCREF(v);
        Py_XSETREF(f->objs[i], v);
        return 1;
    case BOOL_:
        if (!PyBool_Check(v)) return 0;
        ((npy_bool *)f->out)[i] = v == Py_True;
        return 1;
    case F32:
    case F64: {
        double d;
        if (PyFloat_CheckExact(v)) d = PyFloat_AS_DOUBLE(v);
        else if (PyLong_CheckExact(v)) {
            if (!int_in(v, -EXACT_INT, EXACT_INT, &x)) return 0;
            d = (double)x;
        } else if (v == Py_None && s->nullable) d = NAN;
        else return 0;
        if (s->code == F32) {
            float g = (float)d;
            if (isinf(g)) return 0;
            ((float *)f->out)[i] = g;
        } else {
            if (isinf(d)) return 0;
            ((double *)f->out)[i] = d;
        }
        return 1;
    }
    case F16:
        return 0; /* numpy's rounding to half precision: left to it */
    default:
        if (!PyLong_CheckExact(v)) return 0;
        if (s->code == U64) {
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            ((uint64_t *)f->out)[i] = u;
            return 1;
        }
        switch (s->code) {
        case U8: if (!int_in(v, 0, UINT8_MAX, &x)) return 0; ((uint8_t *)f->out)[i] = (uint8_t)x; return 1;
        case U16: if (!int_in(v, 0, UINT16_MAX, &x)) return 0; ((uint16_t *)f->out)[i] = (uint16_t)x; return 1;
        case U32: if (!int_in(v, 0, UINT32_MAX, &x)) return 0; ((uint32_t *)f->out)[i] = (uint32_t)x; return 1;
        case I8: if (!int_in(v, INT8_MIN, INT8_MAX, &x)) return 0; ((int8_t *)f->out)[i] = (int8_t)x; return 1;
        case I16: if (!int_in(v, INT16_MIN, INT16_MAX, &x)) return 0; ((int16_t *)f->out)[i] = (int16_t)x; return 1;
        case I32: if (!int_in(v, INT32_MIN, INT32_MAX, &x)) return 0; ((int32_t *)f->out)[i] = (int32_t)x; return 1;
        case I64: if (!int_in(v, INT64_MIN, INT64_MAX, &x)) return 0; ((int64_t *)f->out)[i] = (int64_t)x; return 1;
        }
        return 0;
    }
}

/* Row-major nested lists or a flat list, leaf by leaf. The leaves are `leaf` levels down (the depth of
 * the first value): every item above that level a non-empty list, none at it (what the Python parser's
 * level-by-level flattening takes, when no list is empty; a request with an empty one is left to it). */
static int walk(Fill *f, PyObject *list, int level, int leaf) {
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n == 0) return 0;
    int lists = level + 1 < leaf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (PyList_CheckExact(item) != lists) return 0;
        if (lists ? !walk(f, item, level + 1, leaf) : !put(f, item)) return 0;
    }
    return 1;
}

static int leaf_level(PyObject *data) {
    int level = 0;
    while (PyList_CheckExact(data) && PyList_GET_SIZE(data) > 0 && level <= MAX_DIMS) {
        data = PyList_GET_ITEM(data, 0);
        level++;
    }
    return level;
}

static PyObject *from_json(const Spec *spec, PyObject *data, int nd, npy_intp *dims, npy_intp count,
                           Py_ssize_t max_string) {
    if (!PyList_CheckExact(data)) return NULL;
    PyObject *array = PyArray_SimpleNew(nd, dims, TYPENUM[spec->code]);
    if (!array) {
        PyErr_Clear();
        return NULL;
    }
    Fill f = {spec, PyArray_DATA((PyArrayObject *)array), PyArray_DATA((PyArrayObject *)array), 0, count,
              max_string};
    int leaf = leaf_level(data);
    if (leaf > MAX_DIMS || !walk(&f, data, 0, leaf) || f.at != count) {
        Py_DECREF(array);
        return NULL;
    }
    return array;
}

/* ---- binary data ---------------------------------------------------------------------------------- */

static int half_ok(uint16_t h, int nullable) {
    if ((h & 0x7c00) != 0x7c00) return 1;  /* finite */
    return nullable && (h & 0x03ff) != 0;  /* NaN: a missing value where the model takes them; never inf */
}

static PyObject *from_binary(const Spec *spec, PyObject *body, const char *raw, Py_ssize_t size, int nd,
                             npy_intp *dims, npy_intp count, Py_ssize_t max_string) {
    if (spec->code == BYTES_) {
        PyObject *array = PyArray_SimpleNew(nd, dims, NPY_OBJECT);
        if (!array) {
            PyErr_Clear();
            return NULL;
        }
        PyObject **objs = PyArray_DATA((PyArrayObject *)array);
        Py_ssize_t pos = 0;
        for (npy_intp i = 0; i < count; i++) {
            uint32_t length;
            if (pos + 4 > size) goto bad;
            memcpy(&length, raw + pos, 4); /* little-endian: this file is built only where that is native */
            pos += 4;
            if (length > (uint64_t)(size - pos) || length > (uint64_t)max_string) goto bad;
            PyObject *s = PyUnicode_DecodeUTF8(raw + pos, length, NULL);
            if (!s) goto bad;
            Py_XSETREF(objs[i], s);
            pos += length;
        }
        if (pos == size) return array;
    bad:
        PyErr_Clear();
        Py_DECREF(array);
        return NULL;
    }
    if (size != count * SIZE[spec->code]) return NULL;
    npy_intp i;
    switch (spec->code) {
    case F16:
        for (i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            if (!half_ok(h, spec->nullable)) return NULL;
        }
        break;
    case F32:
        for (i = 0; i < count; i++) {
            float g;
            memcpy(&g, raw + 4 * i, 4);
            if (!isfinite(g) && !(spec->nullable && isnan(g))) return NULL;
        }
        break;
    case F64:
        for (i = 0; i < count; i++) {
            double d;
            memcpy(&d, raw + 8 * i, 8);
            if (!isfinite(d) && !(spec->nullable && isnan(d))) return NULL;
        }
        break;
    }
    /* A read-only view of the body, as np.frombuffer gives */
    PyArray_Descr *descr = PyArray_DescrFromType(TYPENUM[spec->code]);
    PyObject *array = PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, NULL, (void *)raw, 0, NULL);
    if (!array) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(body);
    if (PyArray_SetBaseObject((PyArrayObject *)array, body) < 0) {
        PyErr_Clear();
        Py_DECREF(array);
        return NULL;
    }
    return array;
}

/* ---- the request ---------------------------------------------------------------------------------- */

static PyObject *one_input(PyObject *tensor, PyObject *table, PyObject *body, const char *binary, Py_ssize_t left,
                           Py_ssize_t *offset, Py_ssize_t max_string, Py_ssize_t *index, npy_intp *batch) {
    if (!PyDict_CheckExact(tensor)) return NULL;
    PyObject *name = PyDict_GetItemWithError(tensor, k_name);
    if (!name || !PyUnicode_CheckExact(name)) return NULL;
    PyObject *entry = PyDict_GetItemWithError(table, name);
    Spec spec;
    if (!entry || !read_spec(entry, index, &spec)) return NULL;
    PyObject *datatype = PyDict_GetItemWithError(tensor, k_datatype);
    if (!datatype || !PyUnicode_CheckExact(datatype) || PyUnicode_Compare(datatype, spec.datatype) != 0) return NULL;
    npy_intp dims[MAX_DIMS];
    int nd = read_shape(PyDict_GetItemWithError(tensor, k_shape), &spec, dims);
    if (nd < 0) return NULL;
    npy_intp count = count_of(dims, nd);
    if (count < 0) return NULL;
    *batch = spec.free_batch ? dims[0] : -1;
    PyObject *size = NULL, *parameters = PyDict_GetItemWithError(tensor, k_parameters);
    if (parameters && PyDict_CheckExact(parameters)) {
        for (int i = 0; i < 3; i++)
            if (PyDict_GetItemWithError(parameters, k_shm[i])) return NULL;
        size = PyDict_GetItemWithError(parameters, k_size);
        if (size == Py_None) size = NULL;
    }
    if (PyErr_Occurred()) return NULL;
    if (size) {
        if (!PyLong_CheckExact(size)) return NULL;
        Py_ssize_t n = PyLong_AsSsize_t(size);
        if (n < 0 || n > left - *offset) return NULL;
        PyObject *array = from_binary(&spec, body, binary + *offset, n, nd, dims, count, max_string);
        *offset += n;
        return array;
    }
    PyObject *data = PyDict_GetItemWithError(tensor, k_data);
    return data ? from_json(&spec, data, nd, dims, count, max_string) : NULL;
}

static PyObject *assemble(PyObject **found, PyObject *names, npy_intp rows, Py_ssize_t max_batch);

static PyObject *inputs(PyObject *self, PyObject *args) {
    PyObject *tensors, *table, *names, *body;
    Py_ssize_t start, max_string, max_batch;
    if (!PyArg_ParseTuple(args, "O!O!O!O!nnn", &PyList_Type, &tensors, &PyDict_Type, &table, &PyTuple_Type, &names,
                          &PyBytes_Type, &body, &start, &max_string, &max_batch))
        return NULL;
    Py_ssize_t wanted = PyTuple_GET_SIZE(names), given = PyList_GET_SIZE(tensors);
    Py_ssize_t length = PyBytes_GET_SIZE(body);
    if (wanted > MAX_INPUTS || given == 0 || start < 0 || start > length) Py_RETURN_NONE;
    PyObject *found[MAX_INPUTS] = {NULL};
    const char *binary = PyBytes_AS_STRING(body) + start;
    Py_ssize_t left = length - start, offset = 0;
    npy_intp rows = -1;
    for (Py_ssize_t t = 0; t < given; t++) {
        Py_ssize_t index = -1;
        npy_intp batch;
        PyObject *array = one_input(PyList_GET_ITEM(tensors, t), table, body, binary, left, &offset, max_string,
                                    &index, &batch);
        if (!array) goto decline;
        if (index < 0 || index >= wanted || found[index]) {
            Py_DECREF(array);
            goto decline;
        }
        found[index] = array;
        if (batch >= 0) {
            if (rows < 0) rows = batch;
            else if (batch != rows) goto decline;
        }
    }
    if (offset != left) goto decline;
    return assemble(found, names, rows, max_batch);
decline:
    PyErr_Clear();
    for (Py_ssize_t i = 0; i < wanted; i++) Py_XDECREF(found[i]);
    Py_RETURN_NONE;
}

/* ({name: array} in the model's order, rows) from the arrays found, or None where one is missing; the
 * references in found[] are released. */
static PyObject *assemble(PyObject **found, PyObject *names, npy_intp rows, Py_ssize_t max_batch) {
    Py_ssize_t wanted = PyTuple_GET_SIZE(names);
    PyObject *result = NULL;
    if (rows < 0) rows = 1;
    if (rows > max_batch) goto decline;
    result = PyDict_New();
    if (!result) goto fail;
    for (Py_ssize_t i = 0; i < wanted; i++)
        if (!found[i] || PyDict_SetItem(result, PyTuple_GET_ITEM(names, i), found[i]) < 0) {
            Py_CLEAR(result);
            if (PyErr_Occurred()) goto fail;
            goto decline;
        }
    for (Py_ssize_t i = 0; i < wanted; i++) Py_XDECREF(found[i]);
    PyObject *answer = Py_BuildValue("(Nn)", result, (Py_ssize_t)rows);
    return answer;
decline:
    PyErr_Clear();
    for (Py_ssize_t i = 0; i < wanted; i++) Py_XDECREF(found[i]);
    Py_RETURN_NONE;
fail:
    for (Py_ssize_t i = 0; i < wanted; i++) Py_XDECREF(found[i]);
    return NULL;
}

/* ---- gRPC: a serialized inference.ModelInferRequest, its inputs in raw_input_contents ------------------ */

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *v = r; return 0; }
    }
    return -1;
}

/* A length-delimited field's bytes: [*p, *p + *n). */
static int delimited(const uint8_t **p, const uint8_t *end, const uint8_t **at, size_t *n) {
    uint64_t len;
    if (varint(p, end, &len) < 0 || len > (uint64_t)(end - *p)) return -1;
    *at = *p; *n = (size_t)len; *p += len;
    return 0;
}

static int skip(const uint8_t **p, const uint8_t *end, int wire) {
    uint64_t v; const uint8_t *at; size_t n;
    switch (wire) {
    case 0: return varint(p, end, &v);
    case 1: if (end - *p < 8) return -1; *p += 8; return 0;
    case 2: return delimited(p, end, &at, &n);
    case 5: if (end - *p < 4) return -1; *p += 4; return 0;
    default: return -1;
    }
}

typedef struct {
    const uint8_t *name, *datatype, *raw;
    size_t name_len, datatype_len, raw_len;
    npy_intp dims[MAX_DIMS];
    int nd;
} Wire;

/* One InferInputTensor: name (1), datatype (2), shape (3, packed or not); 0, or -1 for anything else in it
 * (parameters, typed contents: the Python parser's) or a malformed one. */
static int wire_tensor(const uint8_t *p, const uint8_t *end, Wire *t) {
    t->name = t->datatype = NULL;
    t->nd = 0;
    while (p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key) < 0) return -1;
        int field = (int)(key >> 3), wire = (int)(key & 7);
        const uint8_t *at; size_t n;
        if ((field == 1 || field == 2) && wire == 2) {
            if (delimited(&p, end, &at, &n) < 0) return -1;
            if (field == 1) { t->name = at; t->name_len = n; } else { t->datatype = at; t->datatype_len = n; }
        } else if (field == 3 && (wire == 0 || wire == 2)) {
            const uint8_t *q = p, *stop = end;
            if (wire == 2) { if (delimited(&p, end, &at, &n) < 0) return -1; q = at; stop = at + n; }
            do {
                if (varint(&q, stop, &v) < 0 || t->nd == MAX_DIMS || v < 1 || v > ((uint64_t)1 << 40)) return -1;
                t->dims[t->nd++] = (npy_intp)v;
            } while (wire == 2 && q < stop);
            if (wire == 0) p = q;
        } else if (field == 4 || field == 5) return -1;
        else if (skip(&p, end, wire) < 0) return -1;
    }
    return t->name && t->datatype && t->nd ? 0 : -1;
}

static Wire WIRE[MAX_INPUTS]; /* under the interpreter lock */

static PyObject *grpc_inputs(PyObject *self, PyObject *args) {
    PyObject *message, *table, *names;
    Py_ssize_t max_string, max_batch;
    if (!PyArg_ParseTuple(args, "O!O!O!nn", &PyBytes_Type, &message, &PyDict_Type, &table, &PyTuple_Type, &names,
                          &max_string, &max_batch))
        return NULL;
    Py_ssize_t wanted = PyTuple_GET_SIZE(names);
    if (wanted > MAX_INPUTS) Py_RETURN_NONE;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(message), *end = p + PyBytes_GET_SIZE(message);
    int given = 0, raws = 0;
    while (p < end) {
        uint64_t key;
        if (varint(&p, end, &key) < 0) Py_RETURN_NONE;
        int field = (int)(key >> 3), wire = (int)(key & 7);
        const uint8_t *at; size_t n;
        if ((field == 5 || field == 7) && wire == 2) {
            if (delimited(&p, end, &at, &n) < 0) Py_RETURN_NONE;
            if (field == 5) {
                if (given == MAX_INPUTS || wire_tensor(at, at + n, &WIRE[given]) < 0) Py_RETURN_NONE;
                given++;
            } else {
                if (raws == MAX_INPUTS) Py_RETURN_NONE;
                WIRE[raws].raw = at; WIRE[raws].raw_len = n;
                raws++;
            }
        } else if (skip(&p, end, wire) < 0) Py_RETURN_NONE;
    }
    if (given == 0 || raws != given) Py_RETURN_NONE;
    PyObject *found[MAX_INPUTS] = {NULL};
    npy_intp rows = -1;
    for (int t = 0; t < given; t++) {
        Wire *w = &WIRE[t];
        PyObject *name = PyUnicode_DecodeUTF8((const char *)w->name, w->name_len, NULL);
        if (!name) goto decline;
        PyObject *entry = PyDict_GetItemWithError(table, name);
        Py_DECREF(name);
        Spec spec;
        Py_ssize_t index = -1, dlen;
        if (!entry || !read_spec(entry, &index, &spec) || index < 0 || index >= wanted || found[index]) goto decline;
        const char *datatype = PyUnicode_AsUTF8AndSize(spec.datatype, &dlen);
        if (!datatype || (size_t)dlen != w->datatype_len || memcmp(datatype, w->datatype, dlen) != 0) goto decline;
        npy_intp dims[MAX_DIMS];
        memcpy(dims, w->dims, sizeof dims);
        int nd = check_shape(&spec, dims, w->nd);
        if (nd < 0) goto decline;
        npy_intp count = count_of(dims, nd);
        if (count < 0) goto decline;
        found[index] = from_binary(&spec, message, (const char *)w->raw, (Py_ssize_t)w->raw_len, nd, dims, count,
                                   max_string);
        if (!found[index]) goto decline;
        if (spec.free_batch) {
            if (rows < 0) rows = dims[0];
            else if (dims[0] != rows) goto decline;
        }
    }
    return assemble(found, names, rows, max_batch);
decline:
    PyErr_Clear();
    for (Py_ssize_t i = 0; i < wanted; i++) Py_XDECREF(found[i]);
    Py_RETURN_NONE;
}

/* ---- gRPC: a serialized inference.ModelInferResponse --------------------------------------------------- */

static size_t varint_size(uint64_t v) { size_t n = 1; while (v >= 0x80) { v >>= 7; n++; } return n; }

static uint8_t *put_varint(uint8_t *o, uint64_t v) {
    while (v >= 0x80) { *o++ = (uint8_t)(v | 0x80); v >>= 7; }
    *o++ = (uint8_t)v;
    return o;
}

static uint8_t *put_field(uint8_t *o, int field, const char *data, size_t n) {
    *o++ = (uint8_t)(field << 3 | 2);
    o = put_varint(o, n);
    memcpy(o, data, n);
    return o + n;
}

static size_t field_size(size_t n) { return 1 + varint_size(n) + n; }

typedef struct {
    const char *name, *datatype;
    Py_ssize_t name_len, datatype_len;
    PyArrayObject *array;
    size_t shape_len, tensor_len;
} Out;

static Out OUT[MAX_INPUTS]; /* under the interpreter lock */

/* grpc_response(model_name, model_version, id, outputs): the serialized ModelInferResponse — model_name (1),
 * model_version (2), id (3), then per output (name, datatype, array) an InferOutputTensor (5: name,
 * datatype, shape) and its bytes in raw_output_contents (6), in that order — as protobuf would write it;
 * None for what it does not take (a BYTES or non-contiguous array, too many outputs), which
 * lakeloop.serving._grpc encodes with protobuf. The host's byte order must be the wire's (the caller's
 * check). */
static PyObject *grpc_response(PyObject *self, PyObject *args) {
    PyObject *strings[3], *outputs;
    if (!PyArg_ParseTuple(args, "UUUO!", &strings[0], &strings[1], &strings[2], &PyTuple_Type, &outputs))
        return NULL;
    const char *text[3];
    Py_ssize_t text_len[3];
    size_t total = 0;
    for (int i = 0; i < 3; i++) {
        if (!(text[i] = PyUnicode_AsUTF8AndSize(strings[i], &text_len[i]))) return NULL;
        if (text_len[i]) total += field_size((size_t)text_len[i]);
    }
    Py_ssize_t n = PyTuple_GET_SIZE(outputs);
    if (n > MAX_INPUTS) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(outputs, i), *array;
        Out *out = &OUT[i];
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3) Py_RETURN_NONE;
        array = PyTuple_GET_ITEM(item, 2);
        if (!PyArray_CheckExact(array)) Py_RETURN_NONE;
        out->array = (PyArrayObject *)array;
        if (PyArray_TYPE(out->array) == NPY_OBJECT || !PyArray_IS_C_CONTIGUOUS(out->array)
            || !PyArray_ISNOTSWAPPED(out->array))
            Py_RETURN_NONE;
        if (!(out->name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 0), &out->name_len))
            || !(out->datatype = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 1), &out->datatype_len)))
            return NULL;
        size_t shape_len = 0;
        for (int d = 0; d < PyArray_NDIM(out->array); d++) shape_len += varint_size((uint64_t)PyArray_DIM(out->array, d));
        out->shape_len = shape_len;
        out->tensor_len = (out->name_len ? field_size((size_t)out->name_len) : 0)
                          + (out->datatype_len ? field_size((size_t)out->datatype_len) : 0)
                          + (shape_len ? field_size(shape_len) : 0);
        total += field_size(out->tensor_len) + field_size((size_t)PyArray_NBYTES(out->array));
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(result);
    for (int i = 0; i < 3; i++)
        if (text_len[i]) o = put_field(o, i + 1, text[i], (size_t)text_len[i]);
    for (Py_ssize_t i = 0; i < n; i++) {
        Out *out = &OUT[i];
        *o++ = 5 << 3 | 2;
        o = put_varint(o, out->tensor_len);
        if (out->name_len) o = put_field(o, 1, out->name, (size_t)out->name_len);
        if (out->datatype_len) o = put_field(o, 2, out->datatype, (size_t)out->datatype_len);
        if (out->shape_len) {
            *o++ = 3 << 3 | 2;
            o = put_varint(o, out->shape_len);
            for (int d = 0; d < PyArray_NDIM(out->array); d++) o = put_varint(o, (uint64_t)PyArray_DIM(out->array, d));
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_field(o, 6, PyArray_BYTES(OUT[i].array), (size_t)PyArray_NBYTES(OUT[i].array));
    return result;
}

/* ---- the inference log's dictionary codes ------------------------------------------------------------ */

/* out[i] = table.setdefault(v[i], len(table)) for n values: a string column's dictionary codes. */
static int code_into(PyObject *table, PyObject *const *v, npy_intp n, int32_t *o) {
    for (npy_intp i = 0; i < n; i++) {
        PyObject *code = PyDict_GetItemWithError(table, v[i]);
        if (code) {
            o[i] = (int32_t)PyLong_AsLong(code);
            continue;
        }
        if (PyErr_Occurred()) return -1;
        Py_ssize_t next = PyDict_GET_SIZE(table);
        if (next > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "more distinct values than int32 codes"); return -1; }
        code = PyLong_FromSsize_t(next);
        if (!code || PyDict_SetItem(table, v[i], code) < 0) { Py_XDECREF(code); return -1; }
        Py_DECREF(code);
        o[i] = (int32_t)next;
    }
    return 0;
}

/* codes(values, table, out, start): out[start + i] = table.setdefault(values.flat[i], len(table)), for a
 * C-contiguous object array `values` and an int32 array `out` — the inference log's string columns, a
 * dict lookup a value instead of a Python loop. False (nothing written) for arrays it does not take. */
static PyObject *codes(PyObject *self, PyObject *args) {
    PyArrayObject *values, *out;
    PyObject *table;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!O!O!n", &PyArray_Type, &values, &PyDict_Type, &table, &PyArray_Type, &out, &start))
        return NULL;
    npy_intp n = PyArray_SIZE(values);
    if (PyArray_TYPE(values) != NPY_OBJECT || !PyArray_IS_C_CONTIGUOUS(values) || PyArray_TYPE(out) != NPY_INT32 ||
        PyArray_NDIM(out) != 1 || !PyArray_IS_C_CONTIGUOUS(out) || !PyArray_ISWRITEABLE(out) || start < 0 ||
        start + n > PyArray_DIM(out, 0))
        Py_RETURN_FALSE;
    if (code_into(table, PyArray_DATA(values), n, (int32_t *)PyArray_DATA(out) + start) < 0) return NULL;
    Py_RETURN_TRUE;
}

/* append(plan, sides, buffers, start, rows): one request's columns into the inference log's segment, the
 * loop of _logs._Columns.append in one call. plan holds a (side, key, index, codes) tuple per column:
 * the column is sides[side][key] (an [N] or [N, 1] array, or with index >= 0 entry `index` of each row of
 * an [N, C] one), copied into buffers[i][start:start + rows]; with codes (a dict) it is a string column
 * whose dictionary codes are written instead. Everything is checked before anything is written: False
 * (nothing written) for what it does not take as it stands — another dtype, a wrong size, a
 * non-contiguous array — which the Python loop then takes or refuses with its message. */
#define MAX_COLUMNS 1024
static PyObject *append(PyObject *self, PyObject *args) {
    PyObject *plan, *sides, *buffers;
    Py_ssize_t start, rows;
    if (!PyArg_ParseTuple(args, "O!O!O!nn", &PyTuple_Type, &plan, &PyTuple_Type, &sides, &PyTuple_Type, &buffers,
                          &start, &rows))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    if (n > MAX_COLUMNS || PyTuple_GET_SIZE(buffers) != n || start < 0 || rows < 0) Py_RETURN_FALSE;
    PyArrayObject *source[MAX_COLUMNS];
    for (Py_ssize_t i = 0; i < n; i++) {  /* check every column first */
        PyObject *entry = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) Py_RETURN_FALSE;
        long side = PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
        long index = PyLong_AsLong(PyTuple_GET_ITEM(entry, 2));
        if (PyErr_Occurred()) return NULL;
        if (side < 0 || side >= PyTuple_GET_SIZE(sides) || !PyDict_Check(PyTuple_GET_ITEM(sides, side)))
            Py_RETURN_FALSE;
        PyObject *array = PyDict_GetItemWithError(PyTuple_GET_ITEM(sides, side), PyTuple_GET_ITEM(entry, 1));
        if (!array) { if (PyErr_Occurred()) return NULL; Py_RETURN_FALSE; }
        PyObject *out = PyTuple_GET_ITEM(buffers, i);
        if (!PyArray_Check(array) || !PyArray_Check(out)) Py_RETURN_FALSE;
        PyArrayObject *a = (PyArrayObject *)array, *o = (PyArrayObject *)out;
        if (!PyArray_IS_C_CONTIGUOUS(a) || PyArray_NDIM(o) != 1 || !PyArray_IS_C_CONTIGUOUS(o) ||
            !PyArray_ISWRITEABLE(o) || start + rows > PyArray_DIM(o, 0))
            Py_RETURN_FALSE;
        if (index < 0 ? PyArray_SIZE(a) != rows
                      : PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) != rows || index >= PyArray_DIM(a, 1))
            Py_RETURN_FALSE;
        int strings = PyTuple_GET_ITEM(entry, 3) != Py_None;
        if (strings ? !PyDict_Check(PyTuple_GET_ITEM(entry, 3)) || PyArray_TYPE(a) != NPY_OBJECT ||
                          PyArray_TYPE(o) != NPY_INT32 || index >= 0
                    : PyArray_TYPE(a) == NPY_OBJECT || !PyArray_EquivTypes(PyArray_DESCR(a), PyArray_DESCR(o)))
            Py_RETURN_FALSE;
        source[i] = a;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyTuple_GET_ITEM(plan, i), *table = PyTuple_GET_ITEM(entry, 3);
        PyArrayObject *a = source[i], *o = (PyArrayObject *)PyTuple_GET_ITEM(buffers, i);
        long index = PyLong_AsLong(PyTuple_GET_ITEM(entry, 2));
        npy_intp size = PyArray_ITEMSIZE(o);
        char *to = (char *)PyArray_DATA(o) + start * size;
        if (table != Py_None) {
            if (code_into(table, PyArray_DATA(a), rows, (int32_t *)to) < 0) return NULL;
        } else if (index < 0) {
            memcpy(to, PyArray_DATA(a), (size_t)(rows * size));
        } else {
            npy_intp width = PyArray_DIM(a, 1) * size;
            const char *from = (const char *)PyArray_DATA(a) + index * size;
            for (Py_ssize_t r = 0; r < rows; r++) memcpy(to + r * size, from + r * width, (size_t)size);
        }
    }
    Py_RETURN_TRUE;
}

/* pack(columns, names): the arrays columns[name] for each of names, [N, k] each (C-contiguous, one
 * dtype), side by side as one [N, sum k] array — np.concatenate(axis=1) for a lakeloop model's packed
 * graph input, without its generic machinery. None for anything else (np.concatenate then decides). */
static PyObject *pack(PyObject *self, PyObject *args) {
    PyObject *columns, *names;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &columns, &PyTuple_Type, &names)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n == 0 || n > MAX_COLUMNS) Py_RETURN_NONE;
    PyArrayObject *part[MAX_COLUMNS];
    npy_intp rows = -1, width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *array = PyDict_GetItemWithError(columns, PyTuple_GET_ITEM(names, i));
        if (!array) { if (PyErr_Occurred()) return NULL; Py_RETURN_NONE; }
        if (!PyArray_Check(array)) Py_RETURN_NONE;
        PyArrayObject *a = (PyArrayObject *)array;
        if (PyArray_NDIM(a) != 2 || !PyArray_IS_C_CONTIGUOUS(a) || (rows >= 0 && PyArray_DIM(a, 0) != rows) ||
            (i && !PyArray_EquivTypes(PyArray_DESCR(a), PyArray_DESCR(part[0]))))
            Py_RETURN_NONE;
        rows = PyArray_DIM(a, 0);
        width += PyArray_DIM(a, 1);
        part[i] = a;
    }
    PyArray_Descr *descr = PyArray_DESCR(part[0]);
    Py_INCREF(descr);
    npy_intp dims[2] = {rows, width};
    PyArrayObject *out = (PyArrayObject *)PyArray_NewFromDescr(&PyArray_Type, descr, 2, dims, NULL, NULL, 0, NULL);
    if (!out) return NULL;
    npy_intp size = PyArray_ITEMSIZE(out);
    int objects = PyArray_TYPE(out) == NPY_OBJECT;
    char *to = PyArray_DATA(out);
    for (npy_intp r = 0; r < rows; r++)
        for (Py_ssize_t i = 0; i < n; i++) {
            npy_intp bytes = PyArray_DIM(part[i], 1) * size;
            memcpy(to, (const char *)PyArray_DATA(part[i]) + r * bytes, (size_t)bytes);
            if (objects)
                for (PyObject **v = (PyObject **)to; (char *)v < to + bytes; v++) Py_XINCREF(*v);
            to += bytes;
        }
    return (PyObject *)out;
}

static PyMethodDef methods[] = {
    {"inputs", inputs, METH_VARARGS, "The request's inputs as arrays, or None (see the module's source)."},
    {"grpc_inputs", grpc_inputs, METH_VARARGS,
     "grpc_inputs(message, table, names, max_string_bytes, max_batch): a serialized ModelInferRequest's "
     "inputs from raw_input_contents as arrays (views of message), or None (see the module's source)."},
    {"grpc_response", grpc_response, METH_VARARGS,
     "grpc_response(model_name, model_version, id, outputs): a serialized ModelInferResponse, or None (see the "
     "module's source)."},
    {"codes", codes, METH_VARARGS, "codes(values, table, out, start): the inference log's dictionary codes "
     "(see the module's source)."},
    {"append", append, METH_VARARGS, "append(plan, sides, buffers, start, rows): one request's columns into the "
     "inference log's segment (see the module's source)."},
    {"pack", pack, METH_VARARGS, "pack(columns, names): [N, k] arrays side by side as one [N, sum k] array, or "
     "None (see the module's source)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tensors", "V2 inputs as numpy arrays, compiled.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__tensors(void) {
    import_array();
    if ((k_name = PyUnicode_InternFromString("name")) == NULL
        || (k_datatype = PyUnicode_InternFromString("datatype")) == NULL
        || (k_shape = PyUnicode_InternFromString("shape")) == NULL
        || (k_parameters = PyUnicode_InternFromString("parameters")) == NULL
        || (k_data = PyUnicode_InternFromString("data")) == NULL
        || (k_size = PyUnicode_InternFromString("binary_data_size")) == NULL
        || (k_shm[0] = PyUnicode_InternFromString("shared_memory_region")) == NULL
        || (k_shm[1] = PyUnicode_InternFromString("shared_memory_byte_size")) == NULL
        || (k_shm[2] = PyUnicode_InternFromString("shared_memory_offset")) == NULL
        || (k_empty = PyUnicode_InternFromString("")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
