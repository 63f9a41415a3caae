/*
 * binding.c - the CPython face of the core: nfcl._core.
 *
 * The only file in csrc/ that includes Python. Each wrapper checks its
 * arguments (type, dtype, contiguity, shape) before any C runs, turns the
 * arrays into pointers, releases the GIL for the computation and maps the
 * returned nfcl_status to a Python exception. NumPy owns every buffer; the
 * core never keeps a pointer after a call returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "nfcl.h"

#define ANY (-1)

/* ---------------------------------------------------------------------- */
/* argument checks */

static const char *dtype_name(int typenum)
{
    switch (typenum) {
    case NPY_FLOAT32: return "float32";
    case NPY_INT32: return "int32";
    case NPY_INT64: return "int64";
    case NPY_UINT8: return "uint8";
    default: return "?";
    }
}

static void shape_str(char *buf, size_t n, int ndim, const npy_intp *shape)
{
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++) {
        if (shape[i] == ANY) {
            used += (size_t)snprintf(buf + used, n - used, "%s*", i ? ", " : "");
        } else {
            used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "",
                                     (long long)shape[i]);
        }
    }
    if (used < n) {
        snprintf(buf + used, n - used, "%s)", ndim == 1 ? "," : "");
    }
}

/* Return obj's data pointer if it is an ndarray of the given dtype, C order,
 * aligned, writable when asked, with ndim dims matching shape (ANY = free);
 * free dims are written back into shape. NULL with an exception otherwise. */
static void *check_array(PyObject *obj, const char *name, int typenum, int ndim,
                         npy_intp *shape, int writable)
{
    char want[96], got[96];
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "argument '%s' must be a numpy.ndarray of %s, got %s",
                     name, dtype_name(typenum), Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyErr_Format(PyExc_TypeError, "argument '%s' must have dtype %s, got %s", name,
                     dtype_name(typenum), PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "argument '%s' must be C-contiguous and aligned "
                     "(use numpy.ascontiguousarray)", name);
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "argument '%s' must be writable", name);
        return NULL;
    }
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++) {
        ok = shape[i] == ANY || shape[i] == PyArray_DIM(a, i);
    }
    if (!ok) {
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "argument '%s' must have shape %s, got %s", name,
                     want, got);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        shape[i] = PyArray_DIM(a, i);
    }
    return PyArray_DATA(a);
}

/* an optional array: None gives NULL without an error; *present says which */
static void *check_optional(PyObject *obj, const char *name, int typenum, int ndim,
                            npy_intp *shape, int writable, int *present)
{
    *present = obj != Py_None;
    if (!*present) {
        return NULL;
    }
    return check_array(obj, name, typenum, ndim, shape, writable);
}

static int positive_dim(npy_intp n, const char *name)
{
    if (n <= 0) {
        PyErr_Format(PyExc_ValueError, "'%s' must be at least 1, got %lld", name,
                     (long long)n);
        return 0;
    }
    return 1;
}

/* status -> exception; returns NULL so callers can `return raise_status(s)` */
static PyObject *raise_status(int status, const char *where)
{
    PyObject *type = PyExc_ValueError;
    if (status == NFCL_E_NOMEM) {
        type = PyExc_MemoryError;
    } else if (status == NFCL_E_NONFINITE) {
        type = PyExc_FloatingPointError;
    }
    PyErr_Format(type, "%s: %s", where, nfcl_strerror(status));
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* composite arguments: the encoder config and the touched-row set */

/* One encoder config; cfg tuples start with the kind:
 *   ("transformer", n_items, dim, heads, layers, max_len, ffn, dropout, causal)
 *   ("gru", n_items, dim, hidden, layers, max_len, dropout)
 *   ("caser", n_items, dim, window, n_h, n_v, max_len, dropout) */
enum { ENC_TF, ENC_GRU, ENC_CASER };

typedef struct {
    int kind;
    nfcl_tf_config tf;
    nfcl_gru_config gru;
    nfcl_caser_config caser;
} enc_config;

static int parse_config(PyObject *obj, enc_config *c)
{
    const char *kind;
    long long V;
    int status;
    char msg[160];
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) < 1 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(obj, 0))) {
        PyErr_SetString(PyExc_TypeError, "cfg must be a tuple starting with the encoder "
                        "kind ('transformer', 'gru' or 'caser')");
        return 0;
    }
    kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(obj, 0));
    if (kind == NULL) return 0;
    if (strcmp(kind, "transformer") == 0) {
        nfcl_tf_config *t = &c->tf;
        c->kind = ENC_TF;
        if (!PyArg_ParseTuple(obj, "sLiiiiifi;transformer cfg is (kind, n_items, dim, "
                              "heads, layers, max_len, ffn, dropout, causal)", &kind, &V,
                              &t->dim, &t->heads, &t->layers, &t->max_len, &t->ffn,
                              &t->dropout, &t->causal)) return 0;
        t->n_items = (int64_t)V;
        status = nfcl_tf_check(t);
    } else if (strcmp(kind, "gru") == 0) {
        nfcl_gru_config *g = &c->gru;
        c->kind = ENC_GRU;
        if (!PyArg_ParseTuple(obj, "sLiiiif;gru cfg is (kind, n_items, dim, hidden, "
                              "layers, max_len, dropout)", &kind, &V, &g->dim, &g->hidden,
                              &g->layers, &g->max_len, &g->dropout)) return 0;
        g->n_items = (int64_t)V;
        status = nfcl_gru_check(g);
    } else if (strcmp(kind, "caser") == 0) {
        nfcl_caser_config *k = &c->caser;
        c->kind = ENC_CASER;
        if (!PyArg_ParseTuple(obj, "sLiiiiif;caser cfg is (kind, n_items, dim, window, "
                              "n_h, n_v, max_len, dropout)", &kind, &V, &k->dim,
                              &k->window, &k->n_h, &k->n_v, &k->max_len, &k->dropout)) {
            return 0;
        }
        k->n_items = (int64_t)V;
        status = nfcl_caser_check(k);
    } else {
        PyErr_Format(PyExc_ValueError, "unknown encoder kind '%s'", kind);
        return 0;
    }
    if (status != NFCL_OK) {
        snprintf(msg, sizeof msg, "invalid %s config: every size must be >= 1 (heads must "
                 "divide dim, at most 32 layers), 0 <= dropout < 1, n_items >= 2", kind);
        PyErr_SetString(PyExc_ValueError, msg);
        return 0;
    }
    return 1;
}

/* the encoder interface, dispatched on the kind */

static int enc_max_len(const enc_config *c)
{
    return c->kind == ENC_TF ? c->tf.max_len
         : c->kind == ENC_GRU ? c->gru.max_len : c->caser.max_len;
}

static int enc_dim(const enc_config *c)
{
    return c->kind == ENC_TF ? c->tf.dim : c->kind == ENC_GRU ? c->gru.dim : c->caser.dim;
}

static int64_t enc_n_items(const enc_config *c)
{
    return c->kind == ENC_TF ? c->tf.n_items
         : c->kind == ENC_GRU ? c->gru.n_items : c->caser.n_items;
}

static int enc_num_tensors(const enc_config *c)
{
    return c->kind == ENC_TF ? nfcl_tf_num_tensors(&c->tf)
         : c->kind == ENC_GRU ? nfcl_gru_num_tensors(&c->gru)
         : nfcl_caser_num_tensors(&c->caser);
}

static int enc_tensor(const enc_config *c, int k, nfcl_tensor_info *info)
{
    return c->kind == ENC_TF ? nfcl_tf_tensor(&c->tf, k, info)
         : c->kind == ENC_GRU ? nfcl_gru_tensor(&c->gru, k, info)
         : nfcl_caser_tensor(&c->caser, k, info);
}

static int64_t enc_num_params(const enc_config *c)
{
    return c->kind == ENC_TF ? nfcl_tf_num_params(&c->tf)
         : c->kind == ENC_GRU ? nfcl_gru_num_params(&c->gru)
         : nfcl_caser_num_params(&c->caser);
}

static int64_t enc_acts_size(const enc_config *c, int B, int T)
{
    return c->kind == ENC_TF ? nfcl_tf_acts_size(&c->tf, B, T)
         : c->kind == ENC_GRU ? nfcl_gru_acts_size(&c->gru, B, T)
         : nfcl_caser_acts_size(&c->caser, B, T);
}

static int64_t enc_scratch_size(const enc_config *c, int B, int T)
{
    return c->kind == ENC_TF ? nfcl_tf_scratch_size(&c->tf, B, T)
         : c->kind == ENC_GRU ? nfcl_gru_scratch_size(&c->gru, B, T)
         : nfcl_caser_scratch_size(&c->caser, B, T);
}

static int enc_init(const enc_config *c, float *params, uint64_t seed)
{
    return c->kind == ENC_TF ? nfcl_tf_init(&c->tf, params, seed)
         : c->kind == ENC_GRU ? nfcl_gru_init(&c->gru, params, seed)
         : nfcl_caser_init(&c->caser, params, seed);
}

static int enc_forward(const enc_config *c, const float *params, float *acts,
                       const int32_t *items, int B, int T, uint64_t seed, uint64_t step,
                       int train, float *q)
{
    if (c->kind == ENC_TF) {
        return nfcl_tf_forward(&c->tf, params, acts, items, B, T, seed, step, train, q);
    }
    if (c->kind == ENC_GRU) {
        return nfcl_gru_forward(&c->gru, params, acts, items, B, T, seed, step, train, q);
    }
    return nfcl_caser_forward(&c->caser, params, acts, items, B, T, seed, step, train, q);
}

static int enc_backward(const enc_config *c, const float *params, float *grads,
                        const float *acts, float *scratch, const int32_t *items, int B,
                        int T, uint64_t seed, uint64_t step, int train, const float *dq,
                        nfcl_rowset *rs)
{
    if (c->kind == ENC_TF) {
        return nfcl_tf_backward(&c->tf, params, grads, acts, scratch, items, B, T, seed,
                                step, train, dq, rs);
    }
    if (c->kind == ENC_GRU) {
        return nfcl_gru_backward(&c->gru, params, grads, acts, scratch, items, B, T, seed,
                                 step, train, dq, rs);
    }
    return nfcl_caser_backward(&c->caser, params, grads, acts, scratch, items, B, T, seed,
                               step, train, dq, rs);
}

/* rowset = None or (mask uint8 (R,), rows int32 (R,), count int64 (1,)) with
 * R >= V: the optimizer's row set may cover a table longer than the rows a
 * loss scores (BERT4Rec's [MASK] row) */
static int parse_rowset(PyObject *obj, int64_t V, nfcl_rowset *rs, nfcl_rowset **out)
{
    *out = NULL;
    if (obj == Py_None) {
        return 1;
    }
    PyObject *mask, *rows, *count;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "OOO;rowset must be (mask, rows, "
                                                 "count)", &mask, &rows, &count)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "rowset must be None or (mask, rows, count)");
        }
        return 0;
    }
    npy_intp sm[1] = {ANY}, sr[1] = {ANY}, s1[1] = {1};
    rs->mask = check_array(mask, "rowset.mask", NPY_UINT8, 1, sm, 1);
    if (rs->mask == NULL) return 0;
    rs->rows = check_array(rows, "rowset.rows", NPY_INT32, 1, sr, 1);
    if (rs->rows == NULL) return 0;
    rs->count = check_array(count, "rowset.count", NPY_INT64, 1, s1, 1);
    if (rs->count == NULL) return 0;
    if (sm[0] < V || sr[0] != sm[0]) {
        PyErr_Format(PyExc_ValueError, "rowset.mask and rowset.rows must have equal "
                     "lengths >= %lld rows, got %lld and %lld", (long long)V,
                     (long long)sm[0], (long long)sr[0]);
        return 0;
    }
    if (*rs->count < 0 || *rs->count > sm[0]) {
        PyErr_SetString(PyExc_ValueError, "rowset.count is out of range");
        return 0;
    }

    /* the marks must be exactly the listed rows, or marking could write
     * past the end of rows */
    int64_t marked = 0;
    for (npy_intp i = 0; i < sm[0]; i++) {
        marked += rs->mask[i] != 0;
    }
    int ok = marked == *rs->count;
    for (int64_t i = 0; ok && i < *rs->count; i++) {
        ok = rs->rows[i] > 0 && rs->rows[i] < sm[0] && rs->mask[rs->rows[i]] != 0;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "rowset is inconsistent: rowset.mask must mark "
                        "exactly the rowset.count ids listed first in rowset.rows");
        return 0;
    }
    *out = rs;
    return 1;
}

/* run a core function without the GIL, in the core's float mode (its
 * parallel regions set the same mode on their threads: NFCL_FP_SCOPE) */
#define CALL_C(status, expr)                 \
    Py_BEGIN_ALLOW_THREADS                   \
    unsigned fp_mode_ = nfcl_fp_fast();      \
    status = (expr);                         \
    nfcl_fp_restore(fp_mode_);               \
    Py_END_ALLOW_THREADS

/* ---------------------------------------------------------------------- */
/* encoders */

static PyObject *py_enc_layout(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj;
    enc_config cfg;
    if (!PyArg_ParseTuple(args, "O", &cfg_obj) || !parse_config(cfg_obj, &cfg)) {
        return NULL;
    }
    int n = enc_num_tensors(&cfg);
    PyObject *list = PyList_New(n);
    if (list == NULL) return NULL;
    for (int k = 0; k < n; k++) {
        nfcl_tensor_info info;
        int status = enc_tensor(&cfg, k, &info);
        if (status != NFCL_OK) {
            Py_DECREF(list);
            return raise_status(status, "enc_layout");
        }
        PyObject *shape = info.ndim == 1 ? Py_BuildValue("(L)", (long long)info.shape[0])
                                         : Py_BuildValue("(LL)", (long long)info.shape[0],
                                                         (long long)info.shape[1]);
        PyObject *item = shape ? Py_BuildValue("(sNL)", info.name, shape,
                                               (long long)info.offset) : NULL;
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, item);
    }
    return list;
}

static PyObject *py_enc_sizes(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj;
    enc_config cfg;
    int B, T;
    if (!PyArg_ParseTuple(args, "Oii", &cfg_obj, &B, &T) || !parse_config(cfg_obj, &cfg)) {
        return NULL;
    }
    if (!positive_dim(B, "B") || !positive_dim(T, "T")) return NULL;
    if (T > enc_max_len(&cfg)) {
        return PyErr_Format(PyExc_ValueError, "T=%d exceeds max_len=%d", T,
                            enc_max_len(&cfg));
    }
    int64_t n_params = enc_num_params(&cfg), n_acts = enc_acts_size(&cfg, B, T);
    int64_t n_scratch = enc_scratch_size(&cfg, B, T);
    if (n_params < 0 || n_acts < 0 || n_scratch < 0) {
        return raise_status(NFCL_E_SIZE, "enc_sizes");
    }
    return Py_BuildValue("(LLL)", (long long)n_params, (long long)n_acts,
                         (long long)n_scratch);
}

static PyObject *py_enc_init(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj;
    unsigned long long seed;
    enc_config cfg;
    if (!PyArg_ParseTuple(args, "OOK", &cfg_obj, &p_obj, &seed) ||
        !parse_config(cfg_obj, &cfg)) {
        return NULL;
    }
    npy_intp sp[1] = {(npy_intp)enc_num_params(&cfg)};
    float *params = check_array(p_obj, "params", NPY_FLOAT32, 1, sp, 1);
    if (params == NULL) return NULL;
    int status;
    CALL_C(status, enc_init(&cfg, params, (uint64_t)seed));
    if (status != NFCL_OK) return raise_status(status, "enc_init");
    Py_RETURN_NONE;
}

/* shared checks of forward and backward: params, acts, items -> (B, T) */
static int enc_common(const enc_config *cfg, PyObject *p_obj, PyObject *a_obj,
                      PyObject *i_obj, int acts_writable, float **params, float **acts,
                      int32_t **items, int *B, int *T)
{
    npy_intp sp[1] = {(npy_intp)enc_num_params(cfg)};
    npy_intp si[2] = {ANY, ANY};
    int max_len = enc_max_len(cfg);
    *params = check_array(p_obj, "params", NPY_FLOAT32, 1, sp, 0);
    if (*params == NULL) return 0;
    *items = check_array(i_obj, "items", NPY_INT32, 2, si, 0);
    if (*items == NULL) return 0;
    if (si[0] < 1 || si[1] < 1 || si[1] > max_len || si[0] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "items must have shape (B, T) with B >= 1 and "
                     "1 <= T <= max_len=%d, got (%lld, %lld)", max_len,
                     (long long)si[0], (long long)si[1]);
        return 0;
    }
    *B = (int)si[0];
    *T = (int)si[1];
    npy_intp sa[1] = {(npy_intp)enc_acts_size(cfg, *B, *T)};
    *acts = check_array(a_obj, "acts", NPY_FLOAT32, 1, sa, acts_writable);
    return *acts != NULL;
}

static PyObject *py_enc_forward(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj, *a_obj, *i_obj, *q_obj;
    unsigned long long seed, step;
    int train, B, T, status;
    enc_config cfg;
    float *params, *acts;
    int32_t *items;
    if (!PyArg_ParseTuple(args, "OOOOOKKp", &cfg_obj, &p_obj, &a_obj, &i_obj, &q_obj,
                          &seed, &step, &train) ||
        !parse_config(cfg_obj, &cfg) ||
        !enc_common(&cfg, p_obj, a_obj, i_obj, 1, &params, &acts, &items, &B, &T)) {
        return NULL;
    }
    npy_intp sq[3] = {B, T, enc_dim(&cfg)};
    float *q = check_array(q_obj, "q", NPY_FLOAT32, 3, sq, 1);
    if (q == NULL) return NULL;
    CALL_C(status, enc_forward(&cfg, params, acts, items, B, T, seed, step, train, q));
    if (status != NFCL_OK) return raise_status(status, "enc_forward");
    Py_RETURN_NONE;
}

static PyObject *py_enc_backward(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj, *g_obj, *a_obj, *s_obj, *i_obj, *dq_obj, *rs_obj;
    unsigned long long seed, step;
    int train, B, T, status;
    enc_config cfg;
    nfcl_rowset rs_store, *rs;
    float *params, *acts;
    int32_t *items;
    if (!PyArg_ParseTuple(args, "OOOOOOOKKpO", &cfg_obj, &p_obj, &g_obj, &a_obj, &s_obj,
                          &i_obj, &dq_obj, &seed, &step, &train, &rs_obj) ||
        !parse_config(cfg_obj, &cfg) ||
        !enc_common(&cfg, p_obj, a_obj, i_obj, 0, &params, &acts, &items, &B, &T)) {
        return NULL;
    }
    npy_intp sp[1] = {(npy_intp)enc_num_params(&cfg)};
    npy_intp ss[1] = {(npy_intp)enc_scratch_size(&cfg, B, T)};
    npy_intp sq[3] = {B, T, enc_dim(&cfg)};
    float *grads = check_array(g_obj, "grads", NPY_FLOAT32, 1, sp, 1);
    if (grads == NULL) return NULL;
    float *scratch = check_array(s_obj, "scratch", NPY_FLOAT32, 1, ss, 1);
    if (scratch == NULL) return NULL;
    float *dq = check_array(dq_obj, "dq", NPY_FLOAT32, 3, sq, 0);
    if (dq == NULL || !parse_rowset(rs_obj, enc_n_items(&cfg), &rs_store, &rs)) {
        return NULL;
    }
    CALL_C(status, enc_backward(&cfg, params, grads, acts, scratch, items, B, T, seed,
                                step, train, dq, rs));
    if (status != NFCL_OK) return raise_status(status, "enc_backward");
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------- */
/* losses */

static PyObject *py_sample_candidates(PyObject *self, PyObject *args)
{
    PyObject *t_obj, *seen_obj;
    long long V, n_neg;
    unsigned long long seed, stream;
    if (!PyArg_ParseTuple(args, "OLLKKO", &t_obj, &V, &n_neg, &seed, &stream, &seen_obj)) {
        return NULL;
    }
    npy_intp st[1] = {ANY}, sv[1] = {(npy_intp)V};
    if (!positive_dim(V, "n_items")) return NULL;
    if (n_neg < 0) return PyErr_Format(PyExc_ValueError, "n_neg must be >= 0");
    int32_t *targets = check_array(t_obj, "targets", NPY_INT32, 1, st, 0);
    if (targets == NULL) return NULL;
    uint8_t *seen = check_array(seen_obj, "seen", NPY_UINT8, 1, sv, 1);
    if (seen == NULL) return NULL;
    for (npy_intp i = 0; i < sv[0]; i++) {
        if (seen[i] != 0) {
            return PyErr_Format(PyExc_ValueError, "argument 'seen' must be all zeros "
                                "(scratch), found %d at index %lld", (int)seen[i],
                                (long long)i);
        }
    }
    npy_intp cap = st[0] + (npy_intp)n_neg;
    PyArrayObject *cand = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT32);
    PyArrayObject *tidx = (PyArrayObject *)PyArray_SimpleNew(1, st, NPY_INT32);
    if (cand == NULL || tidx == NULL) {
        Py_XDECREF(cand);
        Py_XDECREF(tidx);
        return NULL;
    }
    int64_t K = 0;
    int status;
    CALL_C(status, nfcl_sample_candidates(targets, st[0], V, n_neg, seed, stream, seen,
                                          PyArray_DATA(cand), &K,
                                          PyArray_DATA(tidx)));
    if (status != NFCL_OK) {
        Py_DECREF(cand);
        Py_DECREF(tidx);
        return raise_status(status, "sample_candidates");
    }
    PyObject *trimmed = PySequence_GetSlice((PyObject *)cand, 0, (Py_ssize_t)K);
    Py_DECREF(cand);
    if (trimmed == NULL) {
        Py_DECREF(tidx);
        return NULL;
    }
    PyObject *owned = PyArray_NewCopy((PyArrayObject *)trimmed, NPY_CORDER);
    Py_DECREF(trimmed);
    if (owned == NULL) {
        Py_DECREF(tidx);
        return NULL;
    }
    return Py_BuildValue("(NN)", owned, (PyObject *)tidx);
}

static PyObject *py_softmax_xent(PyObject *self, PyObject *args)
{
    PyObject *q_obj, *e_obj, *c_obj, *t_obj, *dq_obj, *de_obj, *rs_obj;
    float scale, loss = 0.0f;
    int has_cand, status;
    nfcl_rowset rs_store, *rs;
    if (!PyArg_ParseTuple(args, "OOOOfOOO", &q_obj, &e_obj, &c_obj, &t_obj, &scale,
                          &dq_obj, &de_obj, &rs_obj)) {
        return NULL;
    }
    npy_intp sq[2] = {ANY, ANY}, se[2] = {ANY, ANY}, sc[1] = {ANY};
    float *q = check_array(q_obj, "q", NPY_FLOAT32, 2, sq, 0);
    if (q == NULL) return NULL;
    se[1] = sq[1];
    float *emb = check_array(e_obj, "emb", NPY_FLOAT32, 2, se, 0);
    if (emb == NULL) return NULL;
    int32_t *cand = check_optional(c_obj, "cand", NPY_INT32, 1, sc, 0, &has_cand);
    if (has_cand && cand == NULL) return NULL;
    npy_intp st[1] = {sq[0]};
    int32_t *tidx = check_array(t_obj, "tgt_idx", NPY_INT32, 1, st, 0);
    if (tidx == NULL) return NULL;
    float *dq = check_array(dq_obj, "dq", NPY_FLOAT32, 2, sq, 1);
    if (dq == NULL) return NULL;
    float *demb = check_array(de_obj, "demb", NPY_FLOAT32, 2, se, 1);
    if (demb == NULL || !parse_rowset(rs_obj, se[0], &rs_store, &rs)) return NULL;
    if (!isfinite(scale)) {
        return PyErr_Format(PyExc_ValueError, "argument 'scale' must be finite");
    }
    int64_t K = has_cand ? sc[0] : se[0] - 1;
    CALL_C(status, nfcl_softmax_xent(q, sq[0], (int)sq[1], emb, se[0], cand, K, tidx,
                                     scale, &loss, dq, demb, rs));
    if (status != NFCL_OK) return raise_status(status, "softmax_xent");
    return PyFloat_FromDouble(loss);
}

static PyObject *py_infonce(PyObject *self, PyObject *args)
{
    PyObject *q_obj, *e_obj, *i_obj, *s_obj, *dq_obj, *de_obj, *rs_obj, *p_obj = Py_None;
    float tau, scale, loss = 0.0f;
    int variant, status, has_pos;
    int64_t n_anchors = 0;
    nfcl_rowset rs_store, *rs;
    if (!PyArg_ParseTuple(args, "OOOOfifOOO|O", &q_obj, &e_obj, &i_obj, &s_obj, &tau,
                          &variant, &scale, &dq_obj, &de_obj, &rs_obj, &p_obj)) {
        return NULL;
    }
    npy_intp sq[3] = {ANY, ANY, ANY}, se[2] = {ANY, ANY};
    float *q = check_array(q_obj, "q", NPY_FLOAT32, 3, sq, 0);
    if (q == NULL) return NULL;
    se[1] = sq[2];
    float *emb = check_array(e_obj, "emb", NPY_FLOAT32, 2, se, 0);
    if (emb == NULL) return NULL;
    npy_intp si[2] = {sq[0], sq[1] + 1};
    int32_t *items = check_array(i_obj, "items", NPY_INT32, 2, si, 0);
    if (items == NULL) return NULL;
    uint8_t *skips = check_array(s_obj, "skips", NPY_UINT8, 2, si, 0);
    if (skips == NULL) return NULL;
    float *dq = check_array(dq_obj, "dq", NPY_FLOAT32, 3, sq, 1);
    if (dq == NULL) return NULL;
    float *demb = check_array(de_obj, "demb", NPY_FLOAT32, 2, se, 1);
    if (demb == NULL || !parse_rowset(rs_obj, se[0], &rs_store, &rs)) return NULL;
    npy_intp sp[2] = {sq[0], sq[1]};
    int32_t *pos = check_optional(p_obj, "pos", NPY_INT32, 2, sp, 0, &has_pos);
    if (has_pos && pos == NULL) return NULL;
    if (!(tau > 0.0f) || tau > 1e30f) {
        return PyErr_Format(PyExc_ValueError, "tau must be a positive finite number");
    }
    if (!isfinite(scale)) {
        return PyErr_Format(PyExc_ValueError, "argument 'scale' must be finite");
    }
    if (variant != 0 && variant != 1) {
        return PyErr_Format(PyExc_ValueError, "variant must be 0 or 1, got %d", variant);
    }
    if (sq[0] > INT32_MAX || sq[1] > INT32_MAX || sq[2] > INT32_MAX) {
        return PyErr_Format(PyExc_ValueError, "q is too large");
    }
    CALL_C(status, nfcl_infonce(q, (int)sq[0], (int)sq[1], (int)sq[2], emb, se[0], items,
                                skips, pos, tau, variant, scale, &loss, &n_anchors, dq, demb,
                                rs));
    if (status != NFCL_OK) return raise_status(status, "infonce");
    return Py_BuildValue("(dL)", (double)loss, (long long)n_anchors);
}

/* ---------------------------------------------------------------------- */
/* optimizer */

static PyObject *py_adam_step(PyObject *self, PyObject *args)
{
    PyObject *p_obj, *g_obj, *m_obj, *v_obj, *rs_obj;
    long long emb_rows, t;
    int C, status;
    float lr, b1, b2, eps, wd, clip, gnorm = 0.0f;
    nfcl_rowset rs_store, *rs;
    if (!PyArg_ParseTuple(args, "OOOOLiOffffffL", &p_obj, &g_obj, &m_obj, &v_obj,
                          &emb_rows, &C, &rs_obj, &lr, &b1, &b2, &eps, &wd, &clip, &t)) {
        return NULL;
    }
    npy_intp sp[1] = {ANY};
    float *params = check_array(p_obj, "params", NPY_FLOAT32, 1, sp, 1);
    if (params == NULL) return NULL;
    float *grads = check_array(g_obj, "grads", NPY_FLOAT32, 1, sp, 1);
    if (grads == NULL) return NULL;
    float *m = check_array(m_obj, "m", NPY_FLOAT32, 1, sp, 1);
    if (m == NULL) return NULL;
    float *v = check_array(v_obj, "v", NPY_FLOAT32, 1, sp, 1);
    if (v == NULL) return NULL;
    if (emb_rows < 0 || C < 1 || emb_rows * (long long)C > sp[0]) {
        return PyErr_Format(PyExc_ValueError, "emb_rows*dim = %lld*%d exceeds the %lld "
                            "parameters", emb_rows, C, (long long)sp[0]);
    }
    if (!parse_rowset(rs_obj, emb_rows, &rs_store, &rs)) return NULL;
    if (t < 1) return PyErr_Format(PyExc_ValueError, "step t must be >= 1, got %lld", t);
    CALL_C(status, nfcl_adam_step(params, grads, m, v, sp[0], emb_rows, C, rs, lr, b1, b2,
                                  eps, wd, clip, t, &gnorm));
    if (status != NFCL_OK) return raise_status(status, "adam_step");
    return PyFloat_FromDouble(gnorm);
}

/* ---------------------------------------------------------------------- */
/* evaluation */

static PyObject *py_rank_targets(PyObject *self, PyObject *args)
{
    PyObject *q_obj, *e_obj, *c_obj, *t_obj;
    int has_cand, status;
    if (!PyArg_ParseTuple(args, "OOOO", &q_obj, &e_obj, &c_obj, &t_obj)) return NULL;
    npy_intp sq[2] = {ANY, ANY}, se[2] = {ANY, ANY}, sc[1] = {ANY};
    float *q = check_array(q_obj, "q", NPY_FLOAT32, 2, sq, 0);
    if (q == NULL) return NULL;
    se[1] = sq[1];
    float *emb = check_array(e_obj, "emb", NPY_FLOAT32, 2, se, 0);
    if (emb == NULL) return NULL;
    int32_t *cand = check_optional(c_obj, "cand", NPY_INT32, 1, sc, 0, &has_cand);
    if (has_cand && cand == NULL) return NULL;
    npy_intp st[1] = {sq[0]};
    int32_t *targets = check_array(t_obj, "targets", NPY_INT32, 1, st, 0);
    if (targets == NULL) return NULL;
    PyArrayObject *greater = (PyArrayObject *)PyArray_SimpleNew(1, st, NPY_INT64);
    PyArrayObject *ties = (PyArrayObject *)PyArray_SimpleNew(1, st, NPY_INT64);
    if (greater == NULL || ties == NULL) {
        Py_XDECREF(greater);
        Py_XDECREF(ties);
        return NULL;
    }
    int64_t K = has_cand ? sc[0] : se[0] - 1;
    CALL_C(status, nfcl_rank_targets(q, sq[0], (int)sq[1], emb, se[0], cand, K, targets,
                                     PyArray_DATA(greater), PyArray_DATA(ties)));
    if (status != NFCL_OK) {
        Py_DECREF(greater);
        Py_DECREF(ties);
        return raise_status(status, "rank_targets");
    }
    return Py_BuildValue("(NN)", (PyObject *)greater, (PyObject *)ties);
}

static PyObject *py_topk(PyObject *self, PyObject *args)
{
    PyObject *q_obj, *e_obj, *x_obj;
    int k, has_ex, status;
    if (!PyArg_ParseTuple(args, "OOiO", &q_obj, &e_obj, &k, &x_obj)) return NULL;
    npy_intp sq[2] = {ANY, ANY}, se[2] = {ANY, ANY};
    float *q = check_array(q_obj, "q", NPY_FLOAT32, 2, sq, 0);
    if (q == NULL) return NULL;
    se[1] = sq[1];
    float *emb = check_array(e_obj, "emb", NPY_FLOAT32, 2, se, 0);
    if (emb == NULL) return NULL;
    npy_intp sx[2] = {sq[0], ANY};
    int32_t *exclude = check_optional(x_obj, "exclude", NPY_INT32, 2, sx, 0, &has_ex);
    if (has_ex && exclude == NULL) return NULL;
    if (k < 1 || k > se[0] - 1) {
        return PyErr_Format(PyExc_ValueError, "k must be in 1..%lld, got %d",
                            (long long)(se[0] - 1), k);
    }
    npy_intp so[2] = {sq[0], k};
    PyArrayObject *ids = (PyArrayObject *)PyArray_SimpleNew(2, so, NPY_INT32);
    PyArrayObject *scores = (PyArrayObject *)PyArray_SimpleNew(2, so, NPY_FLOAT32);
    if (ids == NULL || scores == NULL) {
        Py_XDECREF(ids);
        Py_XDECREF(scores);
        return NULL;
    }
    CALL_C(status, nfcl_topk(q, sq[0], (int)sq[1], emb, se[0], k, exclude,
                             has_ex ? (int)sx[1] : 0, PyArray_DATA(ids),
                             PyArray_DATA(scores)));
    if (status != NFCL_OK) {
        Py_DECREF(ids);
        Py_DECREF(scores);
        return raise_status(status, "topk");
    }
    return Py_BuildValue("(NN)", (PyObject *)ids, (PyObject *)scores);
}

static PyObject *py_set_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "threads must be >= 1, got %d", n);
    nfcl_set_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(nfcl_get_threads());
}

static PyObject *py_trunc_normal(PyObject *self, PyObject *args)
{
    PyObject *x_obj;
    float std;
    unsigned long long seed, stream;
    int status;
    if (!PyArg_ParseTuple(args, "OfKK", &x_obj, &std, &seed, &stream)) return NULL;
    if (!isfinite(std) || std < 0.0f) {
        return PyErr_Format(PyExc_ValueError, "argument 'std' must be finite and >= 0");
    }
    if (!PyArray_Check(x_obj)) {
        return PyErr_Format(PyExc_TypeError, "argument 'x' must be a numpy.ndarray");
    }
    npy_intp n[1] = {PyArray_SIZE((PyArrayObject *)x_obj)};
    PyObject *flat = PyArray_Ravel((PyArrayObject *)x_obj, NPY_CORDER);
    if (flat == NULL) return NULL;
    int ok = flat == x_obj || PyArray_DATA((PyArrayObject *)flat) ==
                              PyArray_DATA((PyArrayObject *)x_obj);
    float *x = ok ? check_array(flat, "x", NPY_FLOAT32, 1, n, 1) : NULL;
    Py_DECREF(flat);
    if (!ok) {
        return PyErr_Format(PyExc_ValueError, "argument 'x' must be C-contiguous");
    }
    if (x == NULL) return NULL;
    CALL_C(status, nfcl_trunc_normal(x, n[0], std, seed, stream));
    if (status != NFCL_OK) return raise_status(status, "trunc_normal");
    Py_RETURN_NONE;
}

/* the core's matrix product, exposed so tests can check its row and K
 * splits against NumPy: c = alpha op(a) op(b) + beta c */
static PyObject *py_matmul(PyObject *self, PyObject *args)
{
    PyObject *a_obj, *b_obj, *c_obj;
    int ta, tb;
    float alpha, beta;
    if (!PyArg_ParseTuple(args, "OOOppff", &a_obj, &b_obj, &c_obj, &ta, &tb, &alpha,
                          &beta)) return NULL;
    npy_intp as[2] = {ANY, ANY}, bs[2] = {ANY, ANY}, cs[2] = {ANY, ANY};
    float *a = check_array(a_obj, "a", NPY_FLOAT32, 2, as, 0);
    if (a == NULL) return NULL;
    float *b = check_array(b_obj, "b", NPY_FLOAT32, 2, bs, 0);
    if (b == NULL) return NULL;
    float *c = check_array(c_obj, "c", NPY_FLOAT32, 2, cs, 1);
    if (c == NULL) return NULL;
    npy_intp M = ta ? as[1] : as[0], K = ta ? as[0] : as[1];
    npy_intp N = tb ? bs[0] : bs[1], Kb = tb ? bs[1] : bs[0];
    if (Kb != K || cs[0] != M || cs[1] != N) {
        return PyErr_Format(PyExc_ValueError, "matmul: op(a) is (%zd,%zd), op(b) (%zd,%zd) "
                            "and c (%zd,%zd); they do not chain", (Py_ssize_t)M,
                            (Py_ssize_t)K, (Py_ssize_t)Kb, (Py_ssize_t)N,
                            (Py_ssize_t)cs[0], (Py_ssize_t)cs[1]);
    }
    if (!nfcl_fits_blas(M, N, K) || !nfcl_fits_blas(as[1], bs[1], cs[1])) {
        return PyErr_Format(PyExc_ValueError, "matmul: a size exceeds 2^31 - 1");
    }
    if (K == 0) {
        return PyErr_Format(PyExc_ValueError, "matmul: the inner size K must be >= 1");
    }
    int status = 0;
    CALL_C(status, (nfcl_sgemm(ta, tb, M, N, K, alpha, a, as[1], b, bs[1], beta, c, N), 0));
    (void)status;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------- */
/* module */

static PyMethodDef methods[] = {
    {"enc_layout", py_enc_layout, METH_VARARGS,
     "enc_layout(cfg) -> [(name, shape, offset)]"},
    {"enc_sizes", py_enc_sizes, METH_VARARGS,
     "enc_sizes(cfg, B, T) -> (n_params, n_acts, n_scratch)"},
    {"enc_init", py_enc_init, METH_VARARGS, "enc_init(cfg, params, seed)"},
    {"enc_forward", py_enc_forward, METH_VARARGS,
     "enc_forward(cfg, params, acts, items, q, seed, step, train)"},
    {"enc_backward", py_enc_backward, METH_VARARGS,
     "enc_backward(cfg, params, grads, acts, scratch, items, dq, seed, step, train, "
     "rowset)"},
    {"sample_candidates", py_sample_candidates, METH_VARARGS,
     "sample_candidates(targets, n_items, n_neg, seed, stream, seen) -> (cand, tgt_idx)"},
    {"softmax_xent", py_softmax_xent, METH_VARARGS,
     "softmax_xent(q, emb, cand, tgt_idx, scale, dq, demb, rowset) -> loss"},
    {"infonce", py_infonce, METH_VARARGS,
     "infonce(q, emb, items, skips, tau, variant, scale, dq, demb, rowset, pos=None) "
     "-> (loss, n_anchors)"},
    {"adam_step", py_adam_step, METH_VARARGS,
     "adam_step(params, grads, m, v, emb_rows, dim, rowset, lr, beta1, beta2, eps, "
     "weight_decay, clip, t) -> gnorm"},
    {"rank_targets", py_rank_targets, METH_VARARGS,
     "rank_targets(q, emb, cand, targets) -> (greater, ties)"},
    {"topk", py_topk, METH_VARARGS, "topk(q, emb, k, exclude) -> (ids, scores)"},
    {"trunc_normal", py_trunc_normal, METH_VARARGS, "trunc_normal(x, std, seed, stream)"},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(a, b, c, ta, tb, alpha, beta): c = alpha op(a) op(b) + beta c"},
    {"set_threads", py_set_threads, METH_VARARGS,
     "set_threads(n): the core's threads; OpenBLAS is pinned to one"},
    {"get_threads", py_get_threads, METH_NOARGS, "get_threads() -> the core's threads"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_core",
    .m_doc = "nfcl's C core (see csrc/nfcl.h).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    return PyModule_Create(&module);
}
