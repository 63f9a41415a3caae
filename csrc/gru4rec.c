/*
 * gru4rec.c - the GRU4Rec encoder (Hidasi et al.): parameter layout,
 * initialisation, and the forward and backward (backpropagation through
 * time) passes by hand over caller-owned buffers.
 *
 * Shapes use the letters of nfcl.h plus H, the GRU hidden width, and
 * G = 3H, the stacked gate rows r | z | n. A layer's input width "in" is C
 * for layer 0 and H for the others. N = B*T rows.
 *
 * Each layer follows torch.nn.GRU(batch_first=True), step t of session b:
 *   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
 *   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
 *   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
 *   h' = (1 - z) * n + z * h
 * with h = 0 before position 0. Sessions are right-padded with item 0; at a
 * padding position the state is carried (h' = h), so a session's states do
 * not depend on the other sessions of its batch. q = GELU(head_w y + head_b)
 * is computed at every position, padding included (the losses skip it).
 *
 * Init: item_emb rows 1..V-1 and head_w ~ trunc normal(0.02), item_emb row
 * 0 zero, head_b zero; GRU weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)),
 * as torch.nn.GRU initialises them.
 *
 * Parameter buffer (floats, in this order; nfcl_gru_tensor lists it):
 *   item_emb (V,C)  first, so the optimizer can treat it as the sparse table
 *   per layer l, named "gru{l}.<name>":
 *     w_ih (G,in)  w_hh (G,H)  b_ih (G)  b_hh (G)
 *   head_w (C,H)  head_b (C)
 *
 * Activation buffer (floats, in this order):
 *   x0 (B,T,C)       embedding rows after dropout, the input of layer 0
 *   per layer l:
 *     gates (B,T,G)  r | z | n after their nonlinearities
 *     hn (B,T,H)     W_hn h_{t-1} + b_hn, the part of n that r scales
 *     h (B,T,H)      hidden state after position t
 *     y (B,T,H)      dropout(h), the input of layer l+1 or of the head
 *   hp (B,T,C)       head pre-activation, GELU input
 *   work (B,G)       forward only: one step's recurrent projections
 *
 * Scratch buffer of the backward (floats, in this order):
 *   dx (B,T,C)       d(head pre-activation), later d(x0)
 *   dy (B,T,H)       d(y) of the layer being differentiated
 *   dg (B,T,G)       d(input projections W_ih x + b_ih)
 *   dgh (B,T,G)      d(recurrent projections W_hh h_{t-1} + b_hh)
 *   hprev (B,T,H)    h shifted one position later, zero at t = 0
 *   carry (B,H)      d(h_t) flowing back through the recurrence
 *
 * Dropout sites: 512 is the embedding output, 513 + l the output of layer
 * l; they sit apart from the Transformer's sites. The mask of site s at step
 * k is keyed by stream k * 1024 + s and the flat element index, so backward
 * recomputes it exactly.
 */
#include <math.h>
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "layers.h"
#include "nfcl.h"

#define GRU_MAX_LAYERS 32
#define GRU_LAYER_TENSORS 4
#define SITES_PER_STEP 1024
#define SITE_EMB 512
#define INIT_STD 0.02f
/* init streams sit far above any dropout stream of early steps, and apart
 * from the Transformer's init streams */
#define INIT_STREAM (((uint64_t)1 << 62) + 4096)

/* ---------------------------------------------------------------------- */
/* parameter tensors */

/* NOTE: names are static strings, so the layer count is capped at
 * GRU_MAX_LAYERS; GRU4Rec uses one or two layers. */
#define LAYER_NAMES(l)                                                    \
    {"gru" #l ".w_ih", "gru" #l ".w_hh", "gru" #l ".b_ih", "gru" #l ".b_hh"}

static const char *const LAYER_NAME[GRU_MAX_LAYERS][GRU_LAYER_TENSORS] = {
    LAYER_NAMES(0),  LAYER_NAMES(1),  LAYER_NAMES(2),  LAYER_NAMES(3),
    LAYER_NAMES(4),  LAYER_NAMES(5),  LAYER_NAMES(6),  LAYER_NAMES(7),
    LAYER_NAMES(8),  LAYER_NAMES(9),  LAYER_NAMES(10), LAYER_NAMES(11),
    LAYER_NAMES(12), LAYER_NAMES(13), LAYER_NAMES(14), LAYER_NAMES(15),
    LAYER_NAMES(16), LAYER_NAMES(17), LAYER_NAMES(18), LAYER_NAMES(19),
    LAYER_NAMES(20), LAYER_NAMES(21), LAYER_NAMES(22), LAYER_NAMES(23),
    LAYER_NAMES(24), LAYER_NAMES(25), LAYER_NAMES(26), LAYER_NAMES(27),
    LAYER_NAMES(28), LAYER_NAMES(29), LAYER_NAMES(30), LAYER_NAMES(31),
};

static int num_tensors(const nfcl_gru_config *cfg)
{
    return 3 + GRU_LAYER_TENSORS * cfg->layers;
}

/* input width of layer l */
static int64_t layer_in(const nfcl_gru_config *cfg, int l)
{
    return l == 0 ? cfg->dim : cfg->hidden;
}

/* name and shape of tensor k (unchecked); cols 0 marks a 1-D tensor */
static void tensor_shape(const nfcl_gru_config *cfg, int k,
                         const char **name, int64_t *rows, int64_t *cols)
{
    int64_t G = 3 * (int64_t)cfg->hidden;
    int n_layer = GRU_LAYER_TENSORS * cfg->layers;
    if (k == 0) {
        *name = "item_emb";
        *rows = cfg->n_items;
        *cols = cfg->dim;
        return;
    }
    if (k <= n_layer) {
        int l = (k - 1) / GRU_LAYER_TENSORS, j = (k - 1) % GRU_LAYER_TENSORS;
        *name = LAYER_NAME[l][j];
        *rows = G;
        *cols = j == 0 ? layer_in(cfg, l) : j == 1 ? cfg->hidden : 0;
        return;
    }
    *name = k == n_layer + 1 ? "head_w" : "head_b";
    *rows = cfg->dim;
    *cols = k == n_layer + 1 ? cfg->hidden : 0;
}

/* shape and offset of tensor k; offsets add up the tensors before it */
static void tensor_at(const nfcl_gru_config *cfg, int k,
                      nfcl_tensor_info *out)
{
    int64_t offset = 0, rows, cols;
    for (int i = 0;; i++) {
        tensor_shape(cfg, i, &out->name, &rows, &cols);
        if (i == k) {
            out->ndim = cols == 0 ? 1 : 2;
            out->shape[0] = rows;
            out->shape[1] = cols;
            out->offset = offset;
            return;
        }
        offset += rows * (cols == 0 ? 1 : cols);
    }
}

/* offsets of one layer's tensors in the flat buffer, and its input width */
typedef struct {
    int64_t w_ih, w_hh, b_ih, b_hh;
    int in;
} layer_params;

static layer_params layer_params_at(const nfcl_gru_config *cfg, int l)
{
    int64_t o[GRU_LAYER_TENSORS];
    nfcl_tensor_info info;
    for (int j = 0; j < GRU_LAYER_TENSORS; j++) {
        tensor_at(cfg, 1 + GRU_LAYER_TENSORS * l + j, &info);
        o[j] = info.offset;
    }
    layer_params p = {o[0], o[1], o[2], o[3], (int)layer_in(cfg, l)};
    return p;
}

/* offset of head_w; head_b follows it */
static int64_t head_params_at(const nfcl_gru_config *cfg)
{
    nfcl_tensor_info info;
    tensor_at(cfg, num_tensors(cfg) - 2, &info);
    return info.offset;
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

/* parameter count of a config whose dims are already known positive */
static int64_t count_params(const nfcl_gru_config *cfg)
{
    int64_t C = cfg->dim, H = cfg->hidden, G = 3 * H;
    int64_t total = cap_mul(cfg->n_items, C);
    for (int l = 0; l < cfg->layers; l++) {
        /* w_ih, w_hh, b_ih, b_hh */
        int64_t layer = cap_mul(G, layer_in(cfg, l) + H + 2);
        total = cap_add(total, layer);
    }
    return cap_add(total, cap_mul(C, H + 1));
}

/* ---------------------------------------------------------------------- */
/* config and sizes */

int nfcl_gru_check(const nfcl_gru_config *cfg)
{
    if (cfg == NULL) {
        return NFCL_E_ARG;
    }
    if (cfg->n_items < 2 || cfg->dim < 1 || cfg->hidden < 1 ||
        cfg->layers < 1 || cfg->max_len < 1 ||
        cfg->layers > GRU_MAX_LAYERS) {
        return NFCL_E_SIZE;
    }
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f)) {
        return NFCL_E_ARG;
    }

    /* weights are sgemm operands, item ids are int32 */
    if (!nfcl_fits_blas(3 * (int64_t)cfg->hidden, cfg->n_items - 1,
                        cfg->dim) ||
        count_params(cfg) < 0) {
        return NFCL_E_SIZE;
    }
    return NFCL_OK;
}

int nfcl_gru_num_tensors(const nfcl_gru_config *cfg)
{
    int status = nfcl_gru_check(cfg);
    return status != NFCL_OK ? -status : num_tensors(cfg);
}

int nfcl_gru_tensor(const nfcl_gru_config *cfg, int k, nfcl_tensor_info *out)
{
    int status = nfcl_gru_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (out == NULL) {
        return NFCL_E_ARG;
    }
    if (k < 0 || k >= num_tensors(cfg)) {
        return NFCL_E_RANGE;
    }
    tensor_at(cfg, k, out);
    return NFCL_OK;
}

int64_t nfcl_gru_num_params(const nfcl_gru_config *cfg)
{
    int status = nfcl_gru_check(cfg);
    return status != NFCL_OK ? -(int64_t)status : count_params(cfg);
}

/* floats per (b,t) row of one layer's activations: gates, hn, h, y */
static int64_t layer_row(const nfcl_gru_config *cfg)
{
    return 6 * (int64_t)cfg->hidden;
}

/* status of a (config, B, T) triple: every later size is then valid */
static int check_batch(const nfcl_gru_config *cfg, int B, int T)
{
    int status = nfcl_gru_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (B < 1 || T < 1) {
        return NFCL_E_SIZE;
    }
    if (T > cfg->max_len) {
        return NFCL_E_RANGE;
    }

    /* acts: 2C + 6HL per row + work; scratch: C + 8H per row + carry */
    int64_t N = (int64_t)B * T, C = cfg->dim, H = cfg->hidden;
    int64_t row = cap_add(2 * C, cap_mul(cfg->layers, layer_row(cfg)));
    int64_t acts = cap_add(cap_mul(N, row), cap_mul(B, 3 * H));
    int64_t scratch = cap_add(cap_mul(N, C + 8 * H), cap_mul(B, H));

    /* per-step sgemm operands are strided by T*G in (B,T,G) buffers */
    if (!nfcl_fits_blas(N, cap_mul(T, 3 * H), 0) || acts < 0 ||
        scratch < 0) {
        return NFCL_E_SIZE;
    }
    return NFCL_OK;
}

int64_t nfcl_gru_acts_size(const nfcl_gru_config *cfg, int B, int T)
{
    int status = check_batch(cfg, B, T);
    if (status != NFCL_OK) {
        return -(int64_t)status;
    }
    /* x0, layers, hp, work */
    int64_t N = (int64_t)B * T, C = cfg->dim;
    return N * (2 * C + cfg->layers * layer_row(cfg)) +
           3 * (int64_t)B * cfg->hidden;
}

int64_t nfcl_gru_scratch_size(const nfcl_gru_config *cfg, int B, int T)
{
    int status = check_batch(cfg, B, T);
    if (status != NFCL_OK) {
        return -(int64_t)status;
    }
    /* dx C; dy, hprev 2H; dg, dgh 6H; carry (B,H) */
    int64_t N = (int64_t)B * T, H = cfg->hidden;
    return N * (cfg->dim + 8 * H) + (int64_t)B * H;
}

/* ---------------------------------------------------------------------- */
/* activation and scratch layout (see the file comment) */

typedef struct {
    int64_t gates, hn, h, y;
} layer_acts;

static layer_acts layer_acts_at(const nfcl_gru_config *cfg, int B, int T,
                                int l)
{
    int64_t N = (int64_t)B * T, NH = N * cfg->hidden;
    layer_acts o;
    o.gates = N * cfg->dim + l * N * layer_row(cfg);
    o.hn = o.gates + 3 * NH;
    o.h = o.hn + NH;
    o.y = o.h + NH;
    return o;
}

/* input of layer l: x0 or the previous layer's y */
static int64_t layer_input_at(const nfcl_gru_config *cfg, int B, int T,
                              int l)
{
    return l == 0 ? 0 : layer_acts_at(cfg, B, T, l - 1).y;
}

/* offset of hp; work follows it */
static int64_t head_acts_at(const nfcl_gru_config *cfg, int B, int T)
{
    int64_t N = (int64_t)B * T;
    return N * (cfg->dim + cfg->layers * layer_row(cfg));
}

typedef struct {
    float *dx, *dy, *dg, *dgh, *hprev, *carry;
} gru_scratch;

static gru_scratch scratch_at(const nfcl_gru_config *cfg, float *scratch,
                              int B, int T)
{
    int64_t N = (int64_t)B * T, NH = N * cfg->hidden;
    gru_scratch s;
    s.dx = scratch;
    s.dy = s.dx + N * cfg->dim;
    s.dg = s.dy + NH;
    s.dgh = s.dg + 3 * NH;
    s.hprev = s.dgh + 3 * NH;
    s.carry = s.hprev + NH;
    return s;
}

/* ---------------------------------------------------------------------- */
/* dropout keys */

typedef struct {
    float p; /* 0 when dropout is off for this call */
    uint64_t seed, step;
} drop_key;

/* layer -1 is the embedding output, layer l >= 0 that layer's output */
static uint64_t site_stream(const drop_key *dk, int layer)
{
    return dk->step * SITES_PER_STEP + (uint64_t)(SITE_EMB + 1 + layer);
}

static drop_key make_drop_key(const nfcl_gru_config *cfg, uint64_t seed,
                              uint64_t step, int train)
{
    drop_key dk = {train && cfg->dropout > 0.0f ? cfg->dropout : 0.0f,
                   seed, step};
    return dk;
}

/* ---------------------------------------------------------------------- */
/* argument checks shared by forward and backward */

static int check_call(const nfcl_gru_config *cfg, const void *params,
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
/* bias and embedding kernels (the linear, GELU and dropout kernels are
 * shared with the Transformer in layers.c) */

/* x0 (N,C) = item_emb[items]; item_emb (V,C), items (N) */
static void embed_forward(float *x0, const float *item_emb,
                          const int32_t *items, int64_t N, int C)
{
    for (int64_t i = 0; i < N; i++) {
        const float *e = item_emb + (int64_t)items[i] * C;
        memcpy(x0 + i * C, e, (size_t)C * sizeof(float));
    }
}

/* scatter-add dx0 (N,C) into ditem (V,C); the padding row 0 gets nothing
 * and is never marked */
static void embed_backward(float *ditem, nfcl_rowset *rs, const float *dx0,
                           const int32_t *items, int64_t N, int C)
{
    for (int64_t i = 0; i < N; i++) {
        int32_t item = items[i];
        if (item == 0) {
            continue;
        }
        const float *d_i = dx0 + i * C;
        float *de = ditem + (int64_t)item * C;
        for (int c = 0; c < C; c++) {
            de[c] += d_i[c];
        }
        nfcl_rowset_mark(rs, item);
    }
}

/* ---------------------------------------------------------------------- */
/* the GRU cell at one position t, for the sessions b0 <= b < b1 */

typedef struct {
    int B, T, H;
    int b0, b1; /* the sessions a call covers */
} gru_dims;

/* Sessions never mix in a GRU, so the recurrence runs in row blocks of the
 * batch, each going through all positions on its own: no thread waits for
 * another between positions. The block count depends on B alone (blocks of
 * at least GRU_BLOCK_ROWS sessions, at most GRU_MAX_BLOCKS), so every
 * product has the same shape whatever the thread count. */
#define GRU_BLOCK_ROWS 32
#define GRU_MAX_BLOCKS 4

static int gru_row_blocks(int B)
{
    int n = B / GRU_BLOCK_ROWS;
    return n < 1 ? 1 : n > GRU_MAX_BLOCKS ? GRU_MAX_BLOCKS : n;
}

/* the sessions of block k of nb */
static gru_dims gru_block(int B, int T, int H, int k, int nb)
{
    gru_dims d = {B, T, H, (int)((int64_t)B * k / nb),
                  (int)((int64_t)B * (k + 1) / nb)};
    return d;
}

/* One session's cell: g (G) holds a = W_ih x + b_ih on entry and r | z | n
 * on exit; gh (G) = W_hh h_{t-1} + b_hh; hn (H) gets gh's n part; h_out
 * (H) gets h_t from h_prev (H; read but not used when first). The rows
 * never overlap (restrict); h_prev may be gh itself at t = 0, read only. */
static inline void cell_row_forward(float *restrict g, float *restrict hn,
                                    float *restrict h_out,
                                    const float *restrict gh,
                                    const float *restrict h_prev, int first,
                                    int real, int H)
{
    /* padding keeps the state but its gates are harmless; omp simd: the
     * rows never overlap, so no run-time alias check is needed (gcc's
     * check sent every call down the scalar path) */
#pragma omp simd
    for (int j = 0; j < H; j++) {
        float r = nfcl_sigmoid(g[j] + gh[j]);
        float z = nfcl_sigmoid(g[H + j] + gh[H + j]);
        float n = nfcl_tanh(g[2 * H + j] + r * gh[2 * H + j]);
        float hp_j = h_prev[j], hp = first ? 0.0f : hp_j;
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = n;
        hn[j] = gh[2 * H + j];
        h_out[j] = real ? (1.0f - z) * n + z * hp : hp;
    }
}

/* gates (B,T,G) holds a = W_ih x + b_ih on entry and r | z | n on exit;
 * gh (B,G) = W_hh h_{t-1} + b_hh; hn (B,T,H) gets gh's n rows;
 * h (B,T,H) gets h_t; items (B,T) */
NFCL_CLONES
static void cell_forward(float *gates, float *hn, float *h, const float *gh,
                         const int32_t *items, gru_dims d, int t)
{
    int H = d.H;
    for (int b = d.b0; b < d.b1; b++) {
        int64_t bt = (int64_t)b * d.T + t;
        float *h_bt = h + bt * H;
        const float *gh_b = gh + (int64_t)b * 3 * H;
        /* h_{t-1} is zero at t = 0; any readable row stands in for it */
        const float *hp = t > 0 ? h_bt - H : gh_b;
        cell_row_forward(gates + bt * 3 * H, hn + bt * H, h_bt, gh_b, hp,
                         t == 0, items[bt] != 0, H);
    }
}

/* Gradient of cell_row_forward for one real session at one position:
 * c (H) holds d(h_t) from position t+1 on entry and z * d(h_t) on exit;
 * up (H) is d(h_t) from the layer above; dg, dgh (G) get the gradients of
 * W_ih x + b_ih and of W_hh h_{t-1} + b_hh; g (r | z | n), hn and h_prev
 * as the forward saw them. */
static inline void cell_row_backward(float *restrict dg, float *restrict dgh,
                                     float *restrict c,
                                     const float *restrict up,
                                     const float *restrict g,
                                     const float *restrict hn,
                                     const float *restrict h_prev, int first,
                                     int H)
{
#pragma omp simd
    for (int j = 0; j < H; j++) {
        float r = g[j], z = g[H + j], n = g[2 * H + j];
        float hp_j = h_prev[j], hp = first ? 0.0f : hp_j;
        float dh = c[j] + up[j];

        /* h_t = (1 - z) n + z h_{t-1} */
        float dn = dh * (1.0f - z), dz = dh * (hp - n);
        c[j] = dh * z;

        /* n = tanh(a_n + r gh_n); r, z = sigmoid(a + gh) */
        float dan = dn * (1.0f - n * n);
        float dar = dan * hn[j] * r * (1.0f - r);
        float daz = dz * z * (1.0f - z);
        dg[j] = dgh[j] = dar;
        dg[H + j] = dgh[H + j] = daz;
        dg[2 * H + j] = dan;
        dgh[2 * H + j] = dan * r;
    }
}

/* Gradient of cell_forward at position t. carry (B,H) holds d(h_t) from
 * position t+1 on entry and the direct part z * d(h_t) of d(h_{t-1}) on
 * exit (the caller adds the W_hh path). dh_up (B,T,H) is d(h_t) from the
 * layer above; dg, dgh (B,T,G) get the gradients of W_ih x + b_ih and of
 * W_hh h_{t-1} + b_hh at (b,t); gates, hn, h as saved by the forward. */
NFCL_CLONES
static void cell_backward(float *dg, float *dgh, float *carry,
                          const float *dh_up, const float *gates,
                          const float *hn, const float *h,
                          const int32_t *items, gru_dims d, int t)
{
    int H = d.H;
    for (int b = d.b0; b < d.b1; b++) {
        int64_t bt = (int64_t)b * d.T + t;
        const float *g_bt = gates + bt * 3 * H, *up = dh_up + bt * H;
        float *dg_bt = dg + bt * 3 * H, *dgh_bt = dgh + bt * 3 * H;
        float *c = carry + (int64_t)b * H;

        /* padding: h_t = h_{t-1}, the gradient passes through unchanged */
        if (items[bt] == 0) {
            for (int j = 0; j < H; j++) {
                c[j] += up[j];
            }
            memset(dg_bt, 0, (size_t)3 * H * sizeof(float));
            memset(dgh_bt, 0, (size_t)3 * H * sizeof(float));
            continue;
        }
        /* h_{t-1} is zero at t = 0; any readable row stands in for it */
        const float *hp = t > 0 ? h + (bt - 1) * H : g_bt;
        cell_row_backward(dg_bt, dgh_bt, c, up, g_bt, hn + bt * H, hp, t == 0,
                          H);
    }
}

/* gh_t = W_hh h_{t-1} + b_hh with h_{-1} = 0: dw_hh (G,H) += sum over
 * (b,t) of dgh^T h_{t-1}, db_hh (G) += column sums of dgh (B,T,G).
 * hprev (B,T,H) is work space for h (B,T,H) shifted one position later. */
static void recurrent_backward(float *dw_hh, float *db_hh, float *hprev,
                               const float *dgh, const float *h, gru_dims d)
{
    int64_t N = (int64_t)d.B * d.T, TH = (int64_t)d.T * d.H;
#pragma omp parallel for schedule(static) if (N * d.H >= NFCL_PAR_MIN)
    for (int64_t b = 0; b < d.B; b++) {
        memset(hprev + b * TH, 0, (size_t)d.H * sizeof(float));
        memcpy(hprev + b * TH + d.H, h + b * TH,
               (size_t)(TH - d.H) * sizeof(float));
    }
    nfcl_sgemm(1, 0, 3 * d.H, d.H, N, 1.0f, dgh, 3 * d.H, hprev, d.H, 1.0f,
               dw_hh, d.H);
    nfcl_colsum_add(db_hh, dgh, N, 3 * d.H);
}

/* ---------------------------------------------------------------------- */
/* one GRU layer over the whole sequence */

static void layer_forward(const nfcl_gru_config *cfg, const float *params,
                          float *acts, const int32_t *items, int B, int T,
                          const drop_key *dk, int l)
{
    layer_params P = layer_params_at(cfg, l);
    layer_acts A = layer_acts_at(cfg, B, T, l);
    int H = cfg->hidden, G = 3 * H;
    int64_t N = (int64_t)B * T;
    const float *x = acts + layer_input_at(cfg, B, T, l); /* (B,T,in) */
    float *gates = acts + A.gates, *h = acts + A.h;     /* (B,T,G) (B,T,H) */
    float *gh = acts + head_acts_at(cfg, B, T) + N * cfg->dim; /* (B,G) */

    /* input projections of every position at once: (B,T,G) */
    nfcl_linear_forward(gates, x, params + P.w_ih, params + P.b_ih, N, P.in,
                        G);

    /* the recurrence mixes positions: step t needs h_{t-1}, so steps run
     * in order; gh (B,G) = h_{t-1} W_hh^T + b_hh with h_{-1} = 0 */
    int nb = gru_row_blocks(B);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int k = 0; k < nb; k++) {
        unsigned fp = nfcl_fp_fast(); /* worker threads too */
        gru_dims d = gru_block(B, T, H, k, nb);
        int64_t b0 = d.b0, rows = d.b1 - d.b0;
        for (int t = 0; t < T; t++) {
            for (int64_t b = b0; b < d.b1; b++) {
                memcpy(gh + b * G, params + P.b_hh, (size_t)G * sizeof(float));
            }
            if (t > 0) {
                nfcl_sgemm(0, 1, rows, G, H, 1.0f,
                           h + (b0 * T + t - 1) * H, (int64_t)T * H,
                           params + P.w_hh, H, 1.0f, gh + b0 * G, G);
            }
            cell_forward(gates, acts + A.hn, h, gh, items, d, t);
        }
        nfcl_fp_restore(fp);
    }

    /* y (B,T,H) = dropout(h), the next layer's or the head's input */
    memcpy(acts + A.y, h, (size_t)(N * H) * sizeof(float));
    nfcl_dropout_forward(acts + A.y, N * H, dk->p, dk->seed,
                         site_stream(dk, l), 0);
}

/* Gradient of one layer. s->dy (B,T,H) holds d(y) on entry; on exit
 * d(layer input) is in s->dy for l > 0 and in s->dx (B,T,C) for l = 0.
 * Parameter gradients are added into grads. */
static void layer_backward(const nfcl_gru_config *cfg, const float *params,
                           float *grads, const float *acts,
                           const gru_scratch *s, const int32_t *items,
                           int B, int T, const drop_key *dk, int l)
{
    layer_params P = layer_params_at(cfg, l);
    layer_acts A = layer_acts_at(cfg, B, T, l);
    gru_dims d = {B, T, cfg->hidden, 0, B};
    int H = cfg->hidden, G = 3 * H;
    int64_t N = (int64_t)B * T, NH = N * H;
    const float *x = acts + layer_input_at(cfg, B, T, l); /* (B,T,in) */
    const float *h = acts + A.h;                          /* (B,T,H) */

    /* y = dropout(h): dy becomes d(h) from above, in place */
    nfcl_dropout_forward(s->dy, NH, dk->p, dk->seed, site_stream(dk, l),
                         0);

    /* backpropagation through time, last position first, in the row
     * blocks of the forward; carry (B,H) gathers
     * d(h_{t-1}) = z d(h_t) + dgh_t W_hh */
    memset(s->carry, 0, (size_t)B * H * sizeof(float));
    int nb = gru_row_blocks(B);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int k = 0; k < nb; k++) {
        unsigned fp = nfcl_fp_fast(); /* worker threads too */
        gru_dims blk = gru_block(B, T, H, k, nb);
        int64_t b0 = blk.b0, rows = blk.b1 - blk.b0;
        for (int t = T - 1; t >= 0; t--) {
            cell_backward(s->dg, s->dgh, s->carry, s->dy, acts + A.gates,
                          acts + A.hn, h, items, blk, t);
            if (t > 0) {
                nfcl_sgemm(0, 0, rows, H, G, 1.0f,
                           s->dgh + (b0 * T + t) * G, (int64_t)T * G,
                           params + P.w_hh, H, 1.0f, s->carry + b0 * H, H);
            }
        }
        nfcl_fp_restore(fp);
    }

    /* recurrent weights and bias, all positions in one product */
    recurrent_backward(grads + P.w_hh, grads + P.b_hh, s->hprev, s->dgh, h,
                       d);

    /* input projections a = x W_ih^T + b_ih: d(x) overwrites dy or dx */
    float *dx = l > 0 ? s->dy : s->dx;
    nfcl_linear_backward(dx, grads + P.w_ih, grads + P.b_ih, s->dg, x,
                         params + P.w_ih, N, P.in, G, 0.0f);
}

/* ---------------------------------------------------------------------- */
/* public entry points */

/* item_emb rows 1..V-1 and head_w ~ trunc normal(0.02), row 0 zero;
 * GRU weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.GRU;
 * head_b 0 */
int nfcl_gru_init(const nfcl_gru_config *cfg, float *params, uint64_t seed)
{
    int status = nfcl_gru_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (params == NULL) {
        return NFCL_E_ARG;
    }
    int C = cfg->dim, n_t = num_tensors(cfg);
    float bound = 1.0f / sqrtf((float)cfg->hidden);
    for (int k = 0; k < n_t; k++) {
        nfcl_tensor_info info;
        tensor_at(cfg, k, &info);
        float *t = params + info.offset;
        int64_t n = info.shape[0] * (info.ndim == 2 ? info.shape[1] : 1);
        uint64_t stream = INIT_STREAM + (uint64_t)k;

        /* embedding (padding row 0 stays zero) and head weight */
        if (k == 0 || k == n_t - 2) {
            int64_t skip = k == 0 ? C : 0;
            memset(t, 0, (size_t)skip * sizeof(float));
            nfcl_trunc_normal(t + skip, n - skip, INIT_STD, seed, stream);
        } else if (k == n_t - 1) {
            memset(t, 0, (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; i++) {
                float u = nfcl_uniform(seed, stream, (uint64_t)i);
                t[i] = (2.0f * u - 1.0f) * bound;
            }
        }
    }
    return NFCL_OK;
}

/* items (B,T) int32 in 0..V-1; q (B,T,C) out; acts (acts_size) out */
int nfcl_gru_forward(const nfcl_gru_config *cfg, const float *params,
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
    int C = cfg->dim, H = cfg->hidden, L = cfg->layers;
    int64_t N = (int64_t)B * T;

    /* x0 (B,T,C) = dropout(item_emb[items]) */
    embed_forward(acts, params, items, N, C);
    nfcl_dropout_forward(acts, N * C, dk.p, seed, site_stream(&dk, -1),
                         0);

    /* the layers, each reading the previous one's y */
    for (int l = 0; l < L; l++) {
        layer_forward(cfg, params, acts, items, B, T, &dk, l);
    }

    /* head: q (B,T,C) = GELU(y_L head_w^T + head_b), head_w (C,H) */
    float *hp = acts + head_acts_at(cfg, B, T);
    const float *yL = acts + layer_input_at(cfg, B, T, L);
    const float *hw = params + head_params_at(cfg);
    nfcl_linear_forward(hp, yL, hw, hw + (int64_t)C * H, N, H, C);
    nfcl_gelu_forward(q, hp, N * C);
    return NFCL_OK;
}

/* dq (B,T,C) in; grads (num_params) accumulated (+=); item_emb rows that
 * receive gradient are marked in rs (may be NULL). Must follow
 * nfcl_gru_forward with the same arguments. */
int nfcl_gru_backward(const nfcl_gru_config *cfg, const float *params,
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
    gru_scratch s = scratch_at(cfg, scratch, B, T);
    int C = cfg->dim, H = cfg->hidden, L = cfg->layers;
    int64_t N = (int64_t)B * T;

    /* head: q = GELU(hp), hp = y_L head_w^T + head_b; dx holds d(hp),
     * dy gets d(y_L) */
    const float *hp = acts + head_acts_at(cfg, B, T);
    const float *yL = acts + layer_input_at(cfg, B, T, L);
    int64_t hw = head_params_at(cfg);
    nfcl_gelu_backward(s.dx, hp, dq, N * C);
    nfcl_linear_backward(s.dy, grads + hw, grads + hw + (int64_t)C * H,
                         s.dx, yL, params + hw, N, H, C, 0.0f);

    /* the layers in reverse, dy carrying d(layer output) */
    for (int l = L - 1; l >= 0; l--) {
        layer_backward(cfg, params, grads, acts, &s, items, B, T, &dk, l);
    }

    /* x0 = dropout(item_emb[items]) */
    nfcl_dropout_forward(s.dx, N * C, dk.p, seed, site_stream(&dk, -1),
                         0);
    embed_backward(grads, rs, s.dx, items, N, C);
    return NFCL_OK;
}
