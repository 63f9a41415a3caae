/*
 * transformer.c - the Transformer encoder of SASRec (causal = 1) and
 * BERT4Rec (causal = 0): parameter layout, initialisation, and the forward
 * and backward passes by hand over caller-owned buffers.
 *
 * Each layer matches torch.nn.TransformerEncoderLayer(batch_first=True,
 * norm_first=False, activation='relu'); a GELU head follows the last one.
 * The layer kernels live in layers.c; this file validates arguments, lays
 * out the flat buffers and chains the kernels.
 *
 * Parameter buffer (floats, in this order; nfcl_tf_tensor lists it):
 *   item_emb (V,C)  first, so the optimizer can treat it as the sparse table
 *   pos_emb  (max_len,C)
 *   per layer l, named "layer{l}.<name>":
 *     attn_in_w (3C,C)  rows q | k | v      attn_in_b (3C)
 *     attn_out_w (C,C)  attn_out_b (C)      ln1_w (C)  ln1_b (C)
 *     ff1_w (F,C)  ff1_b (F)  ff2_w (C,F)   ff2_b (C)  ln2_w (C)  ln2_b (C)
 *   head_w (C,C)  head_b (C)
 *
 * Activation buffer (floats, in this order; N = B*T):
 *   x0 (B,T,C)        embedding sum after dropout, the input of layer 0
 *   per layer l:
 *     qkv (B,T,3C)    packed projections q | k | v
 *     att (B,NH,T,T)  attention probabilities before dropout
 *     ay (B,T,C)      head outputs side by side, out-projection input
 *     r1 (B,T,C)      x + dropout(out-projection), LN1 input
 *     mean1, rstd1 (B,T)
 *     x1 (B,T,C)      LN1 output, FFN input
 *     a (B,T,F)       dropout(ReLU(ff1)), ff2 input
 *     r2 (B,T,C)      x1 + dropout(ff2), LN2 input
 *     mean2, rstd2 (B,T)
 *     x2 (B,T,C)      LN2 output, the input of layer l+1
 *   hp (B,T,C)        head pre-activation, GELU input
 *   work (T,T)        forward only: one head's dropped probabilities
 *
 * Scratch buffer of the backward (floats, in this order):
 *   g, r, z (B,T,C)   residual-stream gradient and two temporaries
 *   hb (B,T,F)        FFN hidden gradient
 *   dqkv (B,T,3C)     gradient of the packed projections
 *   pd, ds (T,T)      one head's dropped probabilities and score gradient
 *
 * Dropout sites: site 0 is the embedding sum; layer l owns sites 1 + 4l +
 * {0: attention probabilities, 1: out-projection, 2: ReLU, 3: ff2}. The
 * mask of site s at step k is keyed by stream k * 1024 + s and the flat
 * element index, so backward recomputes it exactly.
 */
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "layers.h"
#include "nfcl.h"

#define TF_MAX_LAYERS 32
#define TF_LAYER_TENSORS 12
#define SITES_PER_STEP 1024
#define INIT_STD 0.02f
/* init streams sit far above any dropout stream of early steps */
#define INIT_STREAM ((uint64_t)1 << 62)

/* ---------------------------------------------------------------------- */
/* parameter tensors */

/* what a tensor dimension or init is, resolved against a config */
enum { D_1, D_C, D_3C, D_F, D_V, D_TMAX };
enum { INIT_NORMAL, INIT_ZERO, INIT_ONE };

typedef struct {
    unsigned char rows, cols, init; /* cols == D_1: a 1-D tensor */
} tensor_spec;

static const tensor_spec LAYER_SPECS[TF_LAYER_TENSORS] = {
    {D_3C, D_C, INIT_NORMAL}, {D_3C, D_1, INIT_ZERO},  /* attn_in */
    {D_C, D_C, INIT_NORMAL},  {D_C, D_1, INIT_ZERO},   /* attn_out */
    {D_C, D_1, INIT_ONE},     {D_C, D_1, INIT_ZERO},   /* ln1 */
    {D_F, D_C, INIT_NORMAL},  {D_F, D_1, INIT_ZERO},   /* ff1 */
    {D_C, D_F, INIT_NORMAL},  {D_C, D_1, INIT_ZERO},   /* ff2 */
    {D_C, D_1, INIT_ONE},     {D_C, D_1, INIT_ZERO},   /* ln2 */
};

/* NOTE: names are static strings, so the layer count is capped at
 * TF_MAX_LAYERS; no recommender encoder comes close. */
#define LAYER_NAMES(l)                                                    \
    {"layer" #l ".attn_in_w", "layer" #l ".attn_in_b",                    \
     "layer" #l ".attn_out_w", "layer" #l ".attn_out_b",                  \
     "layer" #l ".ln1_w", "layer" #l ".ln1_b", "layer" #l ".ff1_w",       \
     "layer" #l ".ff1_b", "layer" #l ".ff2_w", "layer" #l ".ff2_b",       \
     "layer" #l ".ln2_w", "layer" #l ".ln2_b"}

static const char *const LAYER_NAME[TF_MAX_LAYERS][TF_LAYER_TENSORS] = {
    LAYER_NAMES(0),  LAYER_NAMES(1),  LAYER_NAMES(2),  LAYER_NAMES(3),
    LAYER_NAMES(4),  LAYER_NAMES(5),  LAYER_NAMES(6),  LAYER_NAMES(7),
    LAYER_NAMES(8),  LAYER_NAMES(9),  LAYER_NAMES(10), LAYER_NAMES(11),
    LAYER_NAMES(12), LAYER_NAMES(13), LAYER_NAMES(14), LAYER_NAMES(15),
    LAYER_NAMES(16), LAYER_NAMES(17), LAYER_NAMES(18), LAYER_NAMES(19),
    LAYER_NAMES(20), LAYER_NAMES(21), LAYER_NAMES(22), LAYER_NAMES(23),
    LAYER_NAMES(24), LAYER_NAMES(25), LAYER_NAMES(26), LAYER_NAMES(27),
    LAYER_NAMES(28), LAYER_NAMES(29), LAYER_NAMES(30), LAYER_NAMES(31),
};

static int64_t dim_value(const nfcl_tf_config *cfg, int code)
{
    switch (code) {
    case D_C:
        return cfg->dim;
    case D_3C:
        return 3 * (int64_t)cfg->dim;
    case D_F:
        return cfg->ffn;
    case D_V:
        return cfg->n_items;
    case D_TMAX:
        return cfg->max_len;
    default:
        return 1;
    }
}

/* spec and name of tensor k, 0 <= k < 4 + 12 L (unchecked) */
static tensor_spec spec_of(const nfcl_tf_config *cfg, int k,
                           const char **name)
{
    static const tensor_spec item = {D_V, D_C, INIT_NORMAL};
    static const tensor_spec pos = {D_TMAX, D_C, INIT_NORMAL};
    static const tensor_spec head_w = {D_C, D_C, INIT_NORMAL};
    static const tensor_spec head_b = {D_C, D_1, INIT_ZERO};
    int n_layer = TF_LAYER_TENSORS * cfg->layers;
    if (k == 0) {
        *name = "item_emb";
        return item;
    }
    if (k == 1) {
        *name = "pos_emb";
        return pos;
    }
    if (k < 2 + n_layer) {
        int l = (k - 2) / TF_LAYER_TENSORS, j = (k - 2) % TF_LAYER_TENSORS;
        *name = LAYER_NAME[l][j];
        return LAYER_SPECS[j];
    }
    *name = k == 2 + n_layer ? "head_w" : "head_b";
    return k == 2 + n_layer ? head_w : head_b;
}

/* shape and offset of tensor k; offsets add up the tensors before it */
static tensor_spec tensor_at(const nfcl_tf_config *cfg, int k,
                             nfcl_tensor_info *out)
{
    int64_t offset = 0;
    tensor_spec spec;
    for (int i = 0;; i++) {
        spec = spec_of(cfg, i, &out->name);
        int64_t rows = dim_value(cfg, spec.rows);
        int64_t cols = dim_value(cfg, spec.cols);
        if (i == k) {
            out->ndim = spec.cols == D_1 ? 1 : 2;
            out->shape[0] = rows;
            out->shape[1] = spec.cols == D_1 ? 0 : cols;
            out->offset = offset;
            return spec;
        }
        offset += rows * cols;
    }
}

/* offsets of one layer's tensors in the flat buffer */
typedef struct {
    int64_t in_w, in_b, out_w, out_b, ln1_w, ln1_b;
    int64_t ff1_w, ff1_b, ff2_w, ff2_b, ln2_w, ln2_b;
} layer_params;

static layer_params layer_params_at(const nfcl_tf_config *cfg, int l)
{
    int64_t o[TF_LAYER_TENSORS];
    nfcl_tensor_info info;
    for (int j = 0; j < TF_LAYER_TENSORS; j++) {
        tensor_at(cfg, 2 + TF_LAYER_TENSORS * l + j, &info);
        o[j] = info.offset;
    }
    layer_params p = {o[0], o[1], o[2], o[3], o[4],  o[5],
                      o[6], o[7], o[8], o[9], o[10], o[11]};
    return p;
}

/* ---------------------------------------------------------------------- */
/* size arithmetic that cannot overflow: -1 means "too large" */

static int64_t cap_mul(int64_t a, int64_t b)
{
    if (a < 0 || b < 0 || (a != 0 && b > NFCL_MAX_ELEMS / a)) {
        return -1;
    }
    return a * b;
}

static int64_t cap_add(int64_t a, int64_t b)
{
    if (a < 0 || b < 0 || a + b > NFCL_MAX_ELEMS) {
        return -1;
    }
    return a + b;
}

/* ---------------------------------------------------------------------- */
/* config and sizes */

int nfcl_tf_num_tensors(const nfcl_tf_config *cfg)
{
    int status = nfcl_tf_check(cfg);
    if (status != NFCL_OK) {
        return -status;
    }
    return 4 + TF_LAYER_TENSORS * cfg->layers;
}

int nfcl_tf_tensor(const nfcl_tf_config *cfg, int k, nfcl_tensor_info *out)
{
    int status = nfcl_tf_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (out == NULL) {
        return NFCL_E_ARG;
    }
    if (k < 0 || k >= 4 + TF_LAYER_TENSORS * cfg->layers) {
        return NFCL_E_RANGE;
    }
    tensor_at(cfg, k, out);
    return NFCL_OK;
}

/* parameter count of a config whose dims are already known positive */
static int64_t count_params(const nfcl_tf_config *cfg)
{
    int64_t C = cfg->dim, F = cfg->ffn;
    int64_t emb = cap_add(cap_mul(cfg->n_items, C), cap_mul(cfg->max_len, C));
    /* one layer: 4 C^2 + 2 C F weights, 9 C + F biases and LN vectors */
    int64_t layer = cap_add(cap_mul(4 * C, C), cap_mul(2 * C, F));
    layer = cap_add(layer, 9 * C + F);
    int64_t head = cap_add(cap_mul(C, C), C);
    return cap_add(cap_add(emb, cap_mul(cfg->layers, layer)), head);
}

int nfcl_tf_check(const nfcl_tf_config *cfg)
{
    if (cfg == NULL) {
        return NFCL_E_ARG;
    }
    if (cfg->n_items < 2 || cfg->dim < 1 || cfg->heads < 1 ||
        cfg->layers < 1 || cfg->max_len < 1 || cfg->ffn < 1 ||
        cfg->layers > TF_MAX_LAYERS) {
        return NFCL_E_SIZE;
    }
    if (cfg->dim % cfg->heads != 0 || cfg->causal < 0 || cfg->causal > 1) {
        return NFCL_E_ARG;
    }
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f)) {
        return NFCL_E_ARG;
    }

    /* weights are sgemm operands, item ids are int32 */
    if (!nfcl_fits_blas(3 * (int64_t)cfg->dim, cfg->n_items - 1, 0) ||
        count_params(cfg) < 0) {
        return NFCL_E_SIZE;
    }
    return NFCL_OK;
}

int64_t nfcl_tf_num_params(const nfcl_tf_config *cfg)
{
    int status = nfcl_tf_check(cfg);
    return status != NFCL_OK ? -(int64_t)status : count_params(cfg);
}

/* floats of one layer's activations, or -1 when too large */
static int64_t layer_acts_size(const nfcl_tf_config *cfg, int B, int T)
{
    int64_t N = (int64_t)B * T, C = cfg->dim;
    /* qkv 3C + ay, r1, x1, r2, x2 5C + a F + four LN statistics */
    int64_t per_row = 8 * C + cfg->ffn + 4;
    int64_t att = cap_mul(cap_mul((int64_t)B * cfg->heads, T), T);
    return cap_add(cap_mul(N, per_row), att);
}

/* status of a (config, B, T) triple: every later size is then valid */
static int check_batch(const nfcl_tf_config *cfg, int B, int T)
{
    int status = nfcl_tf_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (B < 1 || T < 1) {
        return NFCL_E_SIZE;
    }
    if (T > cfg->max_len) {
        return NFCL_E_RANGE;
    }
    int64_t N = (int64_t)B * T, C = cfg->dim;
    int64_t slots = cap_mul(NFCL_ATTN_SLOTS, cap_mul(T, T));
    int64_t head = cap_add(cap_mul(2 * N, C), slots);
    int64_t acts = cap_add(cap_mul(cfg->layers, layer_acts_size(cfg, B, T)),
                           head);
    int64_t scratch = cap_add(cap_mul(N, 6 * C + cfg->ffn), cap_mul(2, slots));
    if (!nfcl_fits_blas(N, cfg->ffn, 0) || acts < 0 || scratch < 0) {
        return NFCL_E_SIZE;
    }
    return NFCL_OK;
}

int64_t nfcl_tf_acts_size(const nfcl_tf_config *cfg, int B, int T)
{
    int status = check_batch(cfg, B, T);
    if (status != NFCL_OK) {
        return -(int64_t)status;
    }
    /* x0, layers, hp, work */
    int64_t NC = (int64_t)B * T * cfg->dim;
    return NC + cfg->layers * layer_acts_size(cfg, B, T) + NC +
           NFCL_ATTN_SLOTS * (int64_t)T * T;
}

int64_t nfcl_tf_scratch_size(const nfcl_tf_config *cfg, int B, int T)
{
    int status = check_batch(cfg, B, T);
    if (status != NFCL_OK) {
        return -(int64_t)status;
    }
    /* g, r, z, dqkv: 6C; hb: F; pd, ds: 2 T^2 per attention slot */
    int64_t N = (int64_t)B * T;
    return N * (6 * (int64_t)cfg->dim + cfg->ffn) +
           2 * NFCL_ATTN_SLOTS * (int64_t)T * T;
}

/* ---------------------------------------------------------------------- */
/* activation and scratch layout (see the file comment) */

typedef struct {
    int64_t qkv, att, ay, r1, mean1, rstd1, x1, a, r2, mean2, rstd2, x2;
} layer_acts;

static layer_acts layer_acts_at(const nfcl_tf_config *cfg, int B, int T,
                                int l)
{
    int64_t N = (int64_t)B * T, NC = N * cfg->dim;
    int64_t p = NC + l * layer_acts_size(cfg, B, T);
    layer_acts o;
    o.qkv = p;
    p += 3 * NC;
    o.att = p;
    p += (int64_t)B * cfg->heads * T * T;
    o.ay = p;
    o.r1 = p + NC;
    o.mean1 = p + 2 * NC;
    o.rstd1 = o.mean1 + N;
    o.x1 = o.rstd1 + N;
    o.a = o.x1 + NC;
    o.r2 = o.a + N * cfg->ffn;
    o.mean2 = o.r2 + NC;
    o.rstd2 = o.mean2 + N;
    o.x2 = o.rstd2 + N;
    return o;
}

/* offset of hp; work follows it */
static int64_t head_acts_at(const nfcl_tf_config *cfg, int B, int T)
{
    int64_t NC = (int64_t)B * T * cfg->dim;
    return NC + cfg->layers * layer_acts_size(cfg, B, T);
}

/* input of layer l: x0 or the previous layer's x2 */
static int64_t layer_input_at(const nfcl_tf_config *cfg, int B, int T,
                              int l)
{
    return l == 0 ? 0 : layer_acts_at(cfg, B, T, l - 1).x2;
}

typedef struct {
    float *g, *r, *z, *hb, *dqkv, *pd, *ds;
} tf_scratch;

static tf_scratch scratch_at(const nfcl_tf_config *cfg, float *scratch,
                             int B, int T)
{
    int64_t N = (int64_t)B * T, NC = N * cfg->dim;
    tf_scratch s;
    s.g = scratch;
    s.r = s.g + NC;
    s.z = s.r + NC;
    s.hb = s.z + NC;
    s.dqkv = s.hb + N * cfg->ffn;
    s.pd = s.dqkv + 3 * NC;
    s.ds = s.pd + NFCL_ATTN_SLOTS * (int64_t)T * T;
    return s;
}

/* ---------------------------------------------------------------------- */
/* dropout keys */

typedef struct {
    float p; /* 0 when dropout is off for this call */
    uint64_t seed, step;
} drop_key;

enum { SITE_ATT, SITE_ATT_OUT, SITE_RELU, SITE_FF2 };

/* stream of a dropout site; layer -1 names the embedding sum (site 0) */
static uint64_t site_stream(const drop_key *dk, int layer, int site)
{
    int s = layer < 0 ? 0 : 1 + 4 * layer + site;
    return dk->step * SITES_PER_STEP + (uint64_t)s;
}

/* Gradient through an inverted dropout placed before a residual add: the
 * mask applied to a copy in work (N*C), or g itself when dropout is off */
static const float *dropout_grad(const drop_key *dk, const float *g,
                                 float *work, int64_t NC, int layer, int site)
{
    if (!(dk->p > 0.0f)) {
        return g;
    }
    memcpy(work, g, (size_t)NC * sizeof(float));
    nfcl_dropout_forward(work, NC, dk->p, dk->seed, site_stream(dk, layer, site),
                         0);
    return work;
}

static drop_key make_drop_key(const nfcl_tf_config *cfg, uint64_t seed,
                              uint64_t step, int train)
{
    drop_key dk = {train && cfg->dropout > 0.0f ? cfg->dropout : 0.0f,
                   seed, step};
    return dk;
}

static nfcl_attn_args attn_args(const nfcl_tf_config *cfg, int B, int T,
                                const drop_key *dk, int l)
{
    nfcl_attn_args a = {B, T, cfg->dim, cfg->heads, cfg->causal, dk->p,
                        dk->seed, site_stream(dk, l, SITE_ATT)};
    return a;
}

/* ---------------------------------------------------------------------- */
/* argument checks shared by forward and backward */

static int check_call(const nfcl_tf_config *cfg, const void *params,
                      const void *acts, const int32_t *items, int B, int T)
{
    int status = check_batch(cfg, B, T);
    if (status != NFCL_OK) {
        return status;
    }
    if (params == NULL || acts == NULL || items == NULL) {
        return NFCL_E_ARG;
    }
    /* every id must index the table before any row is read */
    return nfcl_check_ids(items, (int64_t)B * T, 0, cfg->n_items);
}

/* ---------------------------------------------------------------------- */
/* embedding and residual kernels */

/* x0 (B,T,C) = item_emb[items] + pos_emb[t]; item_emb (V,C),
 * pos_emb (max_len,C), items (B,T) */
static void embed_forward(float *x0, const float *item_emb,
                          const float *pos_emb, const int32_t *items, int B,
                          int T, int C)
{
    for (int64_t bt = 0; bt < (int64_t)B * T; bt++) {
        const float *e = item_emb + (int64_t)items[bt] * C;
        const float *p = pos_emb + (bt % T) * C;
        float *x_bt = x0 + bt * C;
        for (int c = 0; c < C; c++) {
            x_bt[c] = e[c] + p[c];
        }
    }
}

/* scatter-add dx0 (B,T,C) into ditem (V,C) and dpos (max_len,C); the
 * padding row 0 gets nothing and is never marked */
static void embed_backward(float *ditem, float *dpos, nfcl_rowset *rs,
                           const float *dx0, const int32_t *items, int B,
                           int T, int C)
{
    for (int64_t bt = 0; bt < (int64_t)B * T; bt++) {
        const float *d_bt = dx0 + bt * C;
        float *dp = dpos + (bt % T) * C;
        for (int c = 0; c < C; c++) {
            dp[c] += d_bt[c];
        }
        int32_t item = items[bt];
        if (item == 0) {
            continue;
        }
        float *de = ditem + (int64_t)item * C;
        for (int c = 0; c < C; c++) {
            de[c] += d_bt[c];
        }
        nfcl_rowset_mark(rs, item);
    }
}

/* out (n) += x (n) */
static void residual_add(float *out, const float *x, int64_t n)
{
#pragma omp parallel if (n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            out[i] += x[i];
        }
    }
}

/* ---------------------------------------------------------------------- */
/* one encoder layer */

static void layer_forward(const nfcl_tf_config *cfg, const float *params,
                          float *acts, const int32_t *items, int B, int T,
                          const drop_key *dk, int l)
{
    layer_params P = layer_params_at(cfg, l);
    layer_acts A = layer_acts_at(cfg, B, T, l);
    nfcl_attn_args aa = attn_args(cfg, B, T, dk, l);
    int C = cfg->dim, F = cfg->ffn;
    int64_t N = (int64_t)B * T;
    const float *x = acts + layer_input_at(cfg, B, T, l); /* (B,T,C) */
    float *work = acts + head_acts_at(cfg, B, T) + N * C; /* (slots,T,T) */

    /* attention block: r1 = x + dropout(out_proj(attention(x))) */
    nfcl_linear_forward(acts + A.qkv, x, params + P.in_w, params + P.in_b,
                        N, C, 3 * C);
    nfcl_attention_forward(acts + A.ay, acts + A.att, work, acts + A.qkv,
                           items, &aa);
    nfcl_linear_forward(acts + A.r1, acts + A.ay, params + P.out_w,
                        params + P.out_b, N, C, C);
    nfcl_dropout_forward(acts + A.r1, N * C, dk->p, dk->seed,
                         site_stream(dk, l, SITE_ATT_OUT), 0);
    residual_add(acts + A.r1, x, N * C);
    nfcl_layernorm_forward(acts + A.x1, acts + A.mean1, acts + A.rstd1,
                           acts + A.r1, params + P.ln1_w, params + P.ln1_b,
                           N, C);

    /* feed-forward block: r2 = x1 + dropout(ff2(dropout(ReLU(ff1 x1)))) */
    nfcl_linear_forward(acts + A.a, acts + A.x1, params + P.ff1_w,
                        params + P.ff1_b, N, C, F);
    nfcl_relu_dropout_forward(acts + A.a, N * F, dk->p, dk->seed,
                              site_stream(dk, l, SITE_RELU));
    nfcl_linear_forward(acts + A.r2, acts + A.a, params + P.ff2_w,
                        params + P.ff2_b, N, F, C);
    nfcl_dropout_forward(acts + A.r2, N * C, dk->p, dk->seed,
                         site_stream(dk, l, SITE_FF2), 0);
    residual_add(acts + A.r2, acts + A.x1, N * C);
    nfcl_layernorm_forward(acts + A.x2, acts + A.mean2, acts + A.rstd2,
                           acts + A.r2, params + P.ln2_w, params + P.ln2_b,
                           N, C);
}

/* Gradient of one layer. s->g (B,T,C) holds d(x2) on entry and d(x) on
 * exit; parameter gradients are added into grads. */
static void layer_backward(const nfcl_tf_config *cfg, const float *params,
                           float *grads, const float *acts,
                           const tf_scratch *s, int B, int T,
                           const drop_key *dk, int l)
{
    layer_params P = layer_params_at(cfg, l);
    layer_acts A = layer_acts_at(cfg, B, T, l);
    nfcl_attn_args aa = attn_args(cfg, B, T, dk, l);
    int C = cfg->dim, F = cfg->ffn;
    int64_t N = (int64_t)B * T, NC = N * C;
    const float *x = acts + layer_input_at(cfg, B, T, l); /* (B,T,C) */
    float scale = dk->p > 0.0f ? 1.0f / (1.0f - dk->p) : 1.0f;
    const float *dz;

    /* x2 = LN2(r2): g -> r */
    nfcl_layernorm_backward(s->r, grads + P.ln2_w, grads + P.ln2_b, s->g,
                            acts + A.r2, acts + A.mean2, acts + A.rstd2,
                            params + P.ln2_w, N, C);

    /* r2 = x1 + dropout(ff2(a)): r is also d(x1) through the residual */
    dz = dropout_grad(dk, s->r, s->z, NC, l, SITE_FF2);
    nfcl_linear_backward(s->hb, grads + P.ff2_w, grads + P.ff2_b, dz,
                         acts + A.a, params + P.ff2_w, N, F, C, 0.0f);

    /* a = dropout(ReLU(h)), h = ff1(x1): r += dh ff1_w */
    nfcl_relu_dropout_backward(s->hb, acts + A.a, N * F, scale);
    nfcl_linear_backward(s->r, grads + P.ff1_w, grads + P.ff1_b, s->hb,
                         acts + A.x1, params + P.ff1_w, N, C, F, 1.0f);

    /* x1 = LN1(r1): r -> g */
    nfcl_layernorm_backward(s->g, grads + P.ln1_w, grads + P.ln1_b, s->r,
                            acts + A.r1, acts + A.mean1, acts + A.rstd1,
                            params + P.ln1_w, N, C);

    /* r1 = x + dropout(out_proj(ay)): g is also d(x); r gets d(ay) */
    dz = dropout_grad(dk, s->g, s->z, NC, l, SITE_ATT_OUT);
    nfcl_linear_backward(s->r, grads + P.out_w, grads + P.out_b, dz,
                         acts + A.ay, params + P.out_w, N, C, C, 0.0f);

    /* ay = attention(qkv), qkv = in_proj(x): g += dqkv in_w */
    nfcl_attention_backward(s->dqkv, s->pd, s->ds, s->r, acts + A.qkv,
                            acts + A.att, &aa);
    nfcl_linear_backward(s->g, grads + P.in_w, grads + P.in_b, s->dqkv, x,
                         params + P.in_w, N, C, 3 * C, 1.0f);
}

/* ---------------------------------------------------------------------- */
/* public entry points */

int nfcl_tf_init(const nfcl_tf_config *cfg, float *params, uint64_t seed)
{
    int status = nfcl_tf_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (params == NULL) {
        return NFCL_E_ARG;
    }
    int C = cfg->dim;
    for (int k = 0; k < 4 + TF_LAYER_TENSORS * cfg->layers; k++) {
        nfcl_tensor_info info;
        tensor_spec spec = tensor_at(cfg, k, &info);
        float *t = params + info.offset;
        int64_t n = info.shape[0] * (info.ndim == 2 ? info.shape[1] : 1);
        uint64_t stream = INIT_STREAM + (uint64_t)k;

        /* item_emb keeps its padding row 0 at zero */
        if (k == 0) {
            memset(t, 0, (size_t)C * sizeof(float));
            t += C;
            n -= C;
        }
        if (spec.init == INIT_NORMAL) {
            nfcl_trunc_normal(t, n, INIT_STD, seed, stream);
        } else {
            float v = spec.init == INIT_ONE ? 1.0f : 0.0f;
            for (int64_t i = 0; i < n; i++) {
                t[i] = v;
            }
        }
    }
    return NFCL_OK;
}

int nfcl_tf_forward(const nfcl_tf_config *cfg, const float *params,
                    float *acts, const int32_t *items, int B, int T,
                    uint64_t seed, uint64_t step, int train, float *q)
{
    int status = check_call(cfg, params, acts, items, B, T);
    if (status != NFCL_OK) {
        return status;
    }
    if (q == NULL) {
        return NFCL_E_ARG;
    }
    drop_key dk = make_drop_key(cfg, seed, step, train);
    int C = cfg->dim, L = cfg->layers;
    int64_t NC = (int64_t)B * T * C;
    nfcl_tensor_info head_w;
    tensor_at(cfg, 2 + TF_LAYER_TENSORS * L, &head_w);

    /* x0 (B,T,C) = dropout(item_emb[items] + pos_emb[t]) */
    const float *pos_emb = params + cfg->n_items * C;
    embed_forward(acts, params, pos_emb, items, B, T, C);
    nfcl_dropout_forward(acts, NC, dk.p, seed, site_stream(&dk, -1, 0), 0);

    /* the layers, each reading the previous one's x2 */
    for (int l = 0; l < L; l++) {
        layer_forward(cfg, params, acts, items, B, T, &dk, l);
    }

    /* head: q (B,T,C) = GELU(x_L head_w^T + head_b) */
    float *hp = acts + head_acts_at(cfg, B, T);
    const float *xL = acts + layer_input_at(cfg, B, T, L);
    const float *hw = params + head_w.offset;
    nfcl_linear_forward(hp, xL, hw, hw + (int64_t)C * C, (int64_t)B * T, C,
                        C);
    nfcl_gelu_forward(q, hp, NC);
    return NFCL_OK;
}

int nfcl_tf_backward(const nfcl_tf_config *cfg, const float *params,
                     float *grads, const float *acts, float *scratch,
                     const int32_t *items, int B, int T, uint64_t seed,
                     uint64_t step, int train, const float *dq,
                     nfcl_rowset *rs)
{
    int status = check_call(cfg, params, acts, items, B, T);
    if (status != NFCL_OK) {
        return status;
    }
    if (grads == NULL || scratch == NULL || dq == NULL) {
        return NFCL_E_ARG;
    }
    drop_key dk = make_drop_key(cfg, seed, step, train);
    tf_scratch s = scratch_at(cfg, scratch, B, T);
    int C = cfg->dim, L = cfg->layers;
    int64_t N = (int64_t)B * T, NC = N * C;
    nfcl_tensor_info head_w;
    tensor_at(cfg, 2 + TF_LAYER_TENSORS * L, &head_w);

    /* head: q = GELU(hp), hp = x_L head_w^T + head_b; g = d(x_L) */
    const float *hp = acts + head_acts_at(cfg, B, T);
    const float *xL = acts + layer_input_at(cfg, B, T, L);
    const float *hw = params + head_w.offset;
    float *dhw = grads + head_w.offset;
    nfcl_gelu_backward(s.z, hp, dq, NC);
    nfcl_linear_backward(s.g, dhw, dhw + (int64_t)C * C, s.z, xL, hw, N, C,
                         C, 0.0f);

    /* the layers in reverse, g carrying the residual-stream gradient */
    for (int l = L - 1; l >= 0; l--) {
        layer_backward(cfg, params, grads, acts, &s, B, T, &dk, l);
    }

    /* x0 = dropout(item_emb[items] + pos_emb[t]) */
    nfcl_dropout_forward(s.g, NC, dk.p, seed, site_stream(&dk, -1, 0), 0);
    embed_backward(grads, grads + cfg->n_items * C, rs, s.g, items, B, T,
                   C);
    return NFCL_OK;
}
