/*
 * caser.c - Caser (Tang & Wang, WSDM 2018), one prediction per position.
 *
 * RecBole's Caser reads the last L items of a session once. Here every
 * position t gets its own window: the W items ending at t, left-padded with
 * zero rows. For each (b, t):
 *   E   = the window (W,C); row W-1 is item t; padding rows are zero
 *   v   = conv_v_w E + conv_v_b                 (n_v,C), no activation
 *   o_h = max over offsets of ReLU(conv_h E + b) (n_h) for h = 1..W
 *   x   = dropout([v flattened f-major, o_1, .., o_W])          (D)
 *   z   = ReLU(fc_w x + fc_b)                                   (C)
 *   q   = GELU(head_w z + head_b)                               (C)
 *
 * Windows of neighbouring positions overlap, and a horizontal filter at a
 * given offset sees the same rows whichever window holds it. So each filter
 * runs once per row of the padded sequence (sgemm), and each window only
 * max-pools its own W-h+1 offsets; this mixes information across time.
 *
 * Shapes: B sessions, T positions, C dim, V items, W window, n_h / n_v
 * filters, S = T + W - 1 padded rows per session, N = B*T rows of output,
 * R = B*S padded rows in all, D = n_v*C + n_h*W features.
 */
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "layers.h"
#include "nfcl.h"

/* longest window: tensor names come from a fixed table (below) */
#define CASER_MAX_W 32

/* dropout: the feature mask of step k is keyed by stream k * 1024 + 700
 * (the transformer's sites stay below 700) and the flat index in x (N,D) */
#define SITES_PER_STEP 1024
#define SITE_FEATURES 700

/* init streams sit far above any dropout stream, as in transformer.c */
#define INIT_STREAM ((uint64_t)1 << 62)
#define INIT_STD 0.02f

/* names of the per-height tensors, conv_h{h}_w then conv_h{h}_b */
#define HN(h) "conv_h" #h "_w", "conv_h" #h "_b"
static const char *const hconv_names[2 * CASER_MAX_W] = {
    HN(1),  HN(2),  HN(3),  HN(4),  HN(5),  HN(6),  HN(7),  HN(8),
    HN(9),  HN(10), HN(11), HN(12), HN(13), HN(14), HN(15), HN(16),
    HN(17), HN(18), HN(19), HN(20), HN(21), HN(22), HN(23), HN(24),
    HN(25), HN(26), HN(27), HN(28), HN(29), HN(30), HN(31), HN(32),
};
#undef HN

/* ---------------------------------------------------------------------- */
/* sizes and offsets */

typedef struct {
    int64_t B, T, S, N, R; /* sessions, positions, padded rows, rows */
    int64_t V, C, W, nh, nv, D;
} caser_dims;

/* offsets of the parameter tensors in the flat buffer (item_emb at 0) */
typedef struct {
    int64_t vw, vb;                 /* (n_v,W), (n_v) */
    int64_t hw[CASER_MAX_W + 1];    /* [h]: (n_h, h*C), h = 1..W */
    int64_t hb[CASER_MAX_W + 1];    /* [h]: (n_h) */
    int64_t fw, fb, ow, ob;         /* (C,D), (C), (C,C), (C) */
    int64_t n;                      /* total floats */
} caser_params;

/* offsets of the saved activations */
typedef struct {
    int64_t P; /* (R,C) padded item embeddings */
    int64_t Y; /* (W,R,n_h) horizontal outputs before ReLU, per height */
    int64_t x; /* (N,D) features after dropout */
    int64_t z; /* (N,C) fc output after ReLU */
    int64_t u; /* (N,C) head output before GELU */
    int64_t n;
} caser_acts;

/* offsets in the backward scratch */
typedef struct {
    int64_t du, dz; /* (N,C) each */
    int64_t dx;     /* (N,D) */
    int64_t dP;     /* (R,C) */
    int64_t dY;     /* (R,n_h), reused for every height */
    int64_t n;
} caser_scratch;

int nfcl_caser_check(const nfcl_caser_config *cfg)
{
    if (cfg == NULL) {
        return NFCL_E_ARG;
    }
    int64_t C = cfg->dim, W = cfg->window;
    if (cfg->n_items < 2 || C < 1 || W < 1 || cfg->n_h < 1 || cfg->n_v < 1 ||
        cfg->max_len < 1 || !(cfg->dropout >= 0.0f && cfg->dropout < 1.0f)) {
        return NFCL_E_ARG;
    }
    if (W > CASER_MAX_W) {
        return NFCL_E_SIZE;
    }

    /* every leading dimension fits BLAS, and no product below overflows */
    int64_t D = cfg->n_v * C + cfg->n_h * W;
    if (D > INT32_MAX || W * C > INT32_MAX ||
        cfg->n_items > NFCL_MAX_ELEMS / C || C * D > NFCL_MAX_ELEMS) {
        return NFCL_E_SIZE;
    }
    int64_t conv = cfg->n_h * (W * (W + 1) / 2 * C + W);
    int64_t total = cfg->n_items * C + conv + C * D + C * C;
    return total > NFCL_MAX_ELEMS ? NFCL_E_SIZE : NFCL_OK;
}

static caser_params param_offsets(const nfcl_caser_config *cfg)
{
    caser_params p;
    int64_t C = cfg->dim, nh = cfg->n_h;
    int64_t D = cfg->n_v * C + nh * cfg->window;
    p.vw = cfg->n_items * C;
    p.vb = p.vw + (int64_t)cfg->n_v * cfg->window;
    int64_t at = p.vb + cfg->n_v;
    for (int h = 1; h <= cfg->window; h++) {
        p.hw[h] = at;
        p.hb[h] = at + nh * h * C;
        at = p.hb[h] + nh;
    }
    p.fw = at;
    p.fb = p.fw + C * D;
    p.ow = p.fb + C;
    p.ob = p.ow + C * C;
    p.n = p.ob + C;
    return p;
}

int nfcl_caser_num_tensors(const nfcl_caser_config *cfg)
{
    int status = nfcl_caser_check(cfg);
    return status != NFCL_OK ? -status : 7 + 2 * cfg->window;
}

/* tensor k: item_emb, conv_v_w, conv_v_b, conv_h{h}_w/_b, fc_w, fc_b,
 * head_w, head_b */
int nfcl_caser_tensor(const nfcl_caser_config *cfg, int k, nfcl_tensor_info *out)
{
    if (nfcl_caser_check(cfg) != NFCL_OK || out == NULL) {
        return NFCL_E_ARG;
    }
    int W = cfg->window;
    if (k < 0 || k >= 7 + 2 * W) {
        return NFCL_E_RANGE;
    }
    caser_params p = param_offsets(cfg);
    int64_t C = cfg->dim, D = cfg->n_v * C + (int64_t)cfg->n_h * W;
    int64_t off[7] = {0, p.vw, p.vb, p.fw, p.fb, p.ow, p.ob};
    int64_t rows[7] = {cfg->n_items, cfg->n_v, cfg->n_v, C, C, C, C};
    int64_t cols[7] = {C, W, 0, D, 0, C, 0};
    const char *names[7] = {"item_emb", "conv_v_w", "conv_v_b", "fc_w",
                            "fc_b",     "head_w",   "head_b"};

    /* the per-height block sits between conv_v_b and fc_w */
    if (k >= 3 && k < 3 + 2 * W) {
        int h = (k - 3) / 2 + 1, is_bias = (k - 3) % 2;
        out->name = hconv_names[k - 3];
        out->ndim = is_bias ? 1 : 2;
        out->shape[0] = cfg->n_h;
        out->shape[1] = is_bias ? 0 : h * C;
        out->offset = is_bias ? p.hb[h] : p.hw[h];
        return NFCL_OK;
    }
    int j = k < 3 ? k : k - 2 * W;
    out->name = names[j];
    out->ndim = cols[j] ? 2 : 1;
    out->shape[0] = rows[j];
    out->shape[1] = cols[j];
    out->offset = off[j];
    return NFCL_OK;
}

int64_t nfcl_caser_num_params(const nfcl_caser_config *cfg)
{
    int status = nfcl_caser_check(cfg);
    return status != NFCL_OK ? -(int64_t)status : param_offsets(cfg).n;
}

/* dims of a call; E_SIZE when a buffer would be too large */
static int call_dims(const nfcl_caser_config *cfg, int B, int T, caser_dims *d)
{
    int status = nfcl_caser_check(cfg);
    if (status != NFCL_OK) {
        return status;
    }
    if (B < 1 || T < 1 || T > cfg->max_len) {
        return NFCL_E_SIZE;
    }
    d->B = B;
    d->T = T;
    d->S = (int64_t)T + cfg->window - 1;
    d->N = d->B * d->T;
    d->R = d->B * d->S;
    d->V = cfg->n_items;
    d->C = cfg->dim;
    d->W = cfg->window;
    d->nh = cfg->n_h;
    d->nv = cfg->n_v;
    d->D = d->nv * d->C + d->nh * d->W;

    /* row counts are BLAS M dims; each buffer stays under the element cap */
    if (!nfcl_fits_blas(d->R, d->N, 0) || d->R > NFCL_MAX_ELEMS / d->C ||
        d->N > NFCL_MAX_ELEMS / d->D || d->R > NFCL_MAX_ELEMS / (d->nh * d->W)) {
        return NFCL_E_SIZE;
    }
    return NFCL_OK;
}

static caser_acts acts_offsets(const caser_dims *d)
{
    caser_acts a;
    a.P = 0;
    a.Y = a.P + d->R * d->C;
    a.x = a.Y + d->W * d->R * d->nh;
    a.z = a.x + d->N * d->D;
    a.u = a.z + d->N * d->C;
    a.n = a.u + d->N * d->C;
    return a;
}

static caser_scratch scratch_offsets(const caser_dims *d)
{
    caser_scratch s;
    s.du = 0;
    s.dz = s.du + d->N * d->C;
    s.dx = s.dz + d->N * d->C;
    s.dP = s.dx + d->N * d->D;
    s.dY = s.dP + d->R * d->C;
    s.n = s.dY + d->R * d->nh;
    return s;
}

int64_t nfcl_caser_acts_size(const nfcl_caser_config *cfg, int B, int T)
{
    caser_dims d;
    int status = call_dims(cfg, B, T, &d);
    return status != NFCL_OK ? -(int64_t)status : acts_offsets(&d).n;
}

int64_t nfcl_caser_scratch_size(const nfcl_caser_config *cfg, int B, int T)
{
    caser_dims d;
    int status = call_dims(cfg, B, T, &d);
    return status != NFCL_OK ? -(int64_t)status : scratch_offsets(&d).n;
}

/* ---------------------------------------------------------------------- */
/* init */

int nfcl_caser_init(const nfcl_caser_config *cfg, float *params, uint64_t seed)
{
    int status = nfcl_caser_check(cfg);
    if (status != NFCL_OK || params == NULL) {
        return status != NFCL_OK ? status : NFCL_E_ARG;
    }
    caser_params p = param_offsets(cfg);
    int64_t C = cfg->dim;
    memset(params, 0, (size_t)p.n * sizeof(float));

    /* item rows 1..V-1; row 0 (padding) stays zero */
    uint64_t st = INIT_STREAM;
    nfcl_trunc_normal(params + C, (cfg->n_items - 1) * C, INIT_STD, seed, st);

    /* weights get distinct streams; biases stay zero */
    nfcl_trunc_normal(params + p.vw, p.vb - p.vw, INIT_STD, seed, st + 1);
    nfcl_trunc_normal(params + p.fw, p.fb - p.fw, INIT_STD, seed, st + 2);
    nfcl_trunc_normal(params + p.ow, p.ob - p.ow, INIT_STD, seed, st + 3);
    for (int h = 1; h <= cfg->window; h++) {
        nfcl_trunc_normal(params + p.hw[h], p.hb[h] - p.hw[h], INIT_STD, seed,
                          st + 3 + (uint64_t)h);
    }
    return NFCL_OK;
}

/* ---------------------------------------------------------------------- */
/* embedding: the padded sequence every window is cut from */

/* P (R,C) out. Session b owns rows b*S .. b*S+S-1: W-1 rows of left padding,
 * then its T items. Item 0 gives a zero row without reading item_emb, so
 * padding never reaches the filters whatever row 0 holds.
 * items (B,T), emb (V,C). */
static void embed_forward(float *P, const int32_t *items, const float *emb,
                          const caser_dims *d)
{
    int64_t C = d->C;
#pragma omp parallel for schedule(static) if (d->R * C >= NFCL_PAR_MIN)
    for (int64_t b = 0; b < d->B; b++) {
        memset(P + b * d->S * C, 0, (size_t)(d->S * C) * sizeof(float));
        for (int64_t t = 0; t < d->T; t++) {
            int32_t id = items[b * d->T + t];
            float *P_bt = P + (b * d->S + d->W - 1 + t) * C;
            if (id > 0) {
                memcpy(P_bt, emb + (int64_t)id * C, (size_t)C * sizeof(float));
            }
        }
    }
}

/* demb (V,C) += the dP (R,C) rows of real items; rows are marked in rs */
static void embed_backward(float *demb, nfcl_rowset *rs, const float *dP,
                           const int32_t *items, const caser_dims *d)
{
    int64_t C = d->C;
    for (int64_t b = 0; b < d->B; b++) {
        for (int64_t t = 0; t < d->T; t++) {
            int32_t id = items[b * d->T + t];
            if (id <= 0) {
                continue;
            }
            const float *dP_bt = dP + (b * d->S + d->W - 1 + t) * C;
            float *demb_i = demb + (int64_t)id * C;
            for (int64_t c = 0; c < C; c++) {
                demb_i[c] += dP_bt[c];
            }
            nfcl_rowset_mark(rs, id);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* vertical filters: a weighted sum of the window's rows, per channel */

/* x (N,D) out, columns 0 .. n_v*C-1: v[f,c] = vb[f] + sum_i vw[f,i] E[i,c]
 * where the window E of (b,t) is P rows b*S+t .. b*S+t+W-1.
 * P (R,C), vw (n_v,W), vb (n_v). */
static void vconv_forward(float *x, const float *P, const float *vw,
                          const float *vb, const caser_dims *d)
{
    int64_t C = d->C, W = d->W;
#pragma omp parallel if (d->N * d->nv * C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < d->B; b++) {
            for (int64_t t = 0; t < d->T; t++) {
                const float *E = P + (b * d->S + t) * C;
                float *x_bt = x + (b * d->T + t) * d->D;
                for (int64_t f = 0; f < d->nv; f++) {
                    float *v_f = x_bt + f * C;
                    for (int64_t c = 0; c < C; c++) {
                        v_f[c] = vb[f];
                    }
                    for (int64_t i = 0; i < W; i++) {
                        float w = vw[f * W + i];
                        for (int64_t c = 0; c < C; c++) {
                            v_f[c] += w * E[i * C + c];
                        }
                    }
                }
            }
        }
    }
}

/* backward of v[f,c] = vb[f] + sum_i vw[f,i] E[i,c]:
 * dE[i,c] += vw[f,i] dv[f,c], dvw[f,i] += sum_c dv[f,c] E[i,c],
 * dvb[f] += sum_c dv[f,c]. dP (R,C), dx (N,D) holds dv in its first
 * n_v*C columns, P (R,C). */
static void vconv_backward(float *dP, float *dvw, float *dvb, const float *dx,
                           const float *P, const float *vw, const caser_dims *d)
{
    int64_t C = d->C, W = d->W;
    int par = d->N * d->nv * C >= NFCL_PAR_MIN;

    /* dE: a window's rows belong to its own session, so sessions split */
#pragma omp parallel if (par)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < d->B; b++) {
            for (int64_t t = 0; t < d->T; t++) {
                float *dE = dP + (b * d->S + t) * C;
                const float *dx_bt = dx + (b * d->T + t) * d->D;
                for (int64_t f = 0; f < d->nv; f++) {
                    const float *dv_f = dx_bt + f * C;
                    for (int64_t i = 0; i < W; i++) {
                        float w = vw[f * W + i];
                        for (int64_t c = 0; c < C; c++) {
                            dE[i * C + c] += w * dv_f[c];
                        }
                    }
                }
            }
        }
    }

    /* dvw, dvb: sums over every (b,t) in order; filters split, each held
     * in a local accumulator until its sum is done */
#pragma omp parallel if (par)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t f = 0; f < d->nv; f++) {
            float acc_w[CASER_MAX_W], acc_b = dvb[f];
            memcpy(acc_w, dvw + f * W, (size_t)W * sizeof(float));
            for (int64_t b = 0; b < d->B; b++) {
                for (int64_t t = 0; t < d->T; t++) {
                    const float *E = P + (b * d->S + t) * C;
                    const float *dv_f = dx + (b * d->T + t) * d->D + f * C;
                    for (int64_t c = 0; c < C; c++) {
                        acc_b += dv_f[c];
                    }
                    for (int64_t i = 0; i < W; i++) {
                        float dw = 0.0f;
                        for (int64_t c = 0; c < C; c++) {
                            dw += dv_f[c] * E[i * C + c];
                        }
                        acc_w[i] += dw;
                    }
                }
            }
            memcpy(dvw + f * W, acc_w, (size_t)W * sizeof(float));
            dvb[f] = acc_b;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* horizontal filters: height h, full width, at every padded row */

/* Y (R,n_h) out: Y[a,f] = hb[f] + sum_{j<h} sum_c hw[f, j*C+c] P[a+j, c].
 * Spans that run into the next session are computed but never pooled; the
 * last h-1 rows have no full span and are zeroed. One sgemm per filter row
 * j keeps every leading dimension legal (the spans overlap in P).
 * P (R,C), hw (n_h, h*C), hb (n_h). */
static void hconv_forward(float *Y, const float *P, const float *hw,
                          const float *hb, int64_t h, const caser_dims *d)
{
    int64_t C = d->C, nh = d->nh, M = d->R - h + 1;
#pragma omp parallel for schedule(static) if (M * nh >= NFCL_PAR_MIN)
    for (int64_t a = 0; a < M; a++) {
        memcpy(Y + a * nh, hb, (size_t)nh * sizeof(float));
    }
    memset(Y + M * nh, 0, (size_t)((h - 1) * nh) * sizeof(float));

    /* Y[0:M] (M,n_h) += P[j:j+M] (M,C) @ hw[:, j*C:(j+1)*C]^T */
    for (int64_t j = 0; j < h; j++) {
        nfcl_sgemm(0, 1, M, nh, C, 1.0f, P + j * C, C, hw + j * C, h * C, 1.0f,
                   Y, nh);
    }
}

/* backward of the above given dY (R,n_h) (zero on unpooled rows):
 * dhb[f] += sum_a dY[a,f]; dhw_j (n_h,C) += dY^T P[j:j+M];
 * dP[j:j+M] += dY hw_j. dP (R,C), P (R,C). */
static void hconv_backward(float *dP, float *dhw, float *dhb, const float *dY,
                           const float *P, const float *hw, int64_t h,
                           const caser_dims *d)
{
    int64_t C = d->C, nh = d->nh, M = d->R - h + 1;
    nfcl_colsum_add(dhb, dY, M, (int)nh);
    for (int64_t j = 0; j < h; j++) {
        nfcl_sgemm(1, 0, nh, C, M, 1.0f, dY, nh, P + j * C, C, 1.0f,
                   dhw + j * C, h * C);
        nfcl_sgemm(0, 0, M, C, nh, 1.0f, dY, nh, hw + j * C, h * C, 1.0f,
                   dP + j * C, C);
    }
}

/* ---------------------------------------------------------------------- */
/* max-pooling of the horizontal outputs over each window's offsets */

/* first offset a in g .. g+n-1 with the largest Y[a,f]; Y (R,n_h).
 * ReLU is monotone, so this is also the argmax after ReLU. */
static int64_t window_argmax(const float *Y, int64_t g, int64_t n, int64_t nh,
                             int64_t f)
{
    int64_t best = g;
    for (int64_t a = g + 1; a < g + n; a++) {
        if (Y[a * nh + f] > Y[best * nh + f]) {
            best = a;
        }
    }
    return best;
}

/* x (N,D) out, columns col .. col+n_h-1: o[f] = max_a ReLU(Y[a,f]) over the
 * W-h+1 offsets of the window of (b,t), a = b*S+t .. b*S+t+W-h. */
static void pool_forward(float *x, int64_t col, const float *Y, int64_t h,
                         const caser_dims *d)
{
    int64_t nh = d->nh, n = d->W - h + 1;
#pragma omp parallel if (d->N * nh * n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < d->B; b++) {
            for (int64_t t = 0; t < d->T; t++) {
                float *o_bt = x + (b * d->T + t) * d->D + col;
                for (int64_t f = 0; f < nh; f++) {
                    int64_t a = window_argmax(Y, b * d->S + t, n, nh, f);
                    float y = Y[a * nh + f];
                    o_bt[f] = y > 0.0f ? y : 0.0f;
                }
            }
        }
    }
}

/* dY (R,n_h) out: the gradient of each pooled feature goes to its argmax
 * offset when that value passed the ReLU (y > 0); zero elsewhere. */
static void pool_backward(float *dY, const float *dx, int64_t col,
                          const float *Y, int64_t h, const caser_dims *d)
{
    int64_t nh = d->nh, n = d->W - h + 1;
    /* a window's argmax lies in its own session's rows: sessions split */
#pragma omp parallel if (d->N * nh * n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < d->B; b++) {
            memset(dY + b * d->S * nh, 0, (size_t)(d->S * nh) * sizeof(float));
            for (int64_t t = 0; t < d->T; t++) {
                const float *do_bt = dx + (b * d->T + t) * d->D + col;
                for (int64_t f = 0; f < nh; f++) {
                    int64_t a = window_argmax(Y, b * d->S + t, n, nh, f);
                    if (Y[a * nh + f] > 0.0f) {
                        dY[a * nh + f] += do_bt[f];
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------- */
/* forward and backward */

/* shared checks: config, sizes, then every item id, before any write */
static int check_call(const nfcl_caser_config *cfg, const int32_t *items,
                      int B, int T, caser_dims *d)
{
    int status = call_dims(cfg, B, T, d);
    if (status != NFCL_OK) {
        return status;
    }
    if (items == NULL) {
        return NFCL_E_ARG;
    }
    return nfcl_check_ids(items, d->N, 0, d->V);
}

int nfcl_caser_forward(const nfcl_caser_config *cfg, const float *params,
                       float *acts, const int32_t *items, int B, int T,
                       uint64_t seed, uint64_t step, int train, float *q)
{
    caser_dims d;
    int status = check_call(cfg, items, B, T, &d);
    if (status != NFCL_OK) {
        return status;
    }
    if (params == NULL || acts == NULL || q == NULL) {
        return NFCL_E_ARG;
    }
    caser_params p = param_offsets(cfg);
    caser_acts a = acts_offsets(&d);
    float *P = acts + a.P, *Y = acts + a.Y, *x = acts + a.x;
    float *z = acts + a.z, *u = acts + a.u;

    /* padded embeddings, then the vertical features (n_v*C per row) */
    embed_forward(P, items, params, &d);
    vconv_forward(x, P, params + p.vw, params + p.vb, &d);

    /* each height: filters over the padded rows, pooled per window */
    for (int64_t h = 1; h <= d.W; h++) {
        float *Y_h = Y + (h - 1) * d.R * d.nh;
        hconv_forward(Y_h, P, params + p.hw[h], params + p.hb[h], h, &d);
        pool_forward(x, d.nv * d.C + (h - 1) * d.nh, Y_h, h, &d);
    }

    /* dropout on the features, fc + ReLU, then the prediction head */
    float drop = train ? cfg->dropout : 0.0f;
    uint64_t stream = step * SITES_PER_STEP + SITE_FEATURES;
    nfcl_dropout_forward(x, d.N * d.D, drop, seed, stream, 0);
    nfcl_linear_forward(z, x, params + p.fw, params + p.fb, d.N, (int)d.D,
                        (int)d.C);
#pragma omp parallel if (d.N * d.C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < d.N * d.C; i++) {
            z[i] = z[i] > 0.0f ? z[i] : 0.0f;
        }
    }
    nfcl_linear_forward(u, z, params + p.ow, params + p.ob, d.N, (int)d.C,
                        (int)d.C);
    nfcl_gelu_forward(q, u, d.N * d.C);
    return NFCL_OK;
}

/* Adds (+=) every parameter gradient into grads, item_emb rows included
 * (never row 0), and marks those rows in rs (may be NULL). scratch is
 * overwritten; acts must come from nfcl_caser_forward with the same
 * arguments, which regenerates the same dropout mask from (seed, step). */
int nfcl_caser_backward(const nfcl_caser_config *cfg, const float *params,
                        float *grads, const float *acts, float *scratch,
                        const int32_t *items, int B, int T, uint64_t seed,
                        uint64_t step, int train, const float *dq,
                        nfcl_rowset *rs)
{
    caser_dims d;
    int status = check_call(cfg, items, B, T, &d);
    if (status != NFCL_OK) {
        return status;
    }
    if (!params || !grads || !acts || !scratch || !dq) {
        return NFCL_E_ARG;
    }
    caser_params p = param_offsets(cfg);
    caser_acts a = acts_offsets(&d);
    caser_scratch s = scratch_offsets(&d);
    const float *P = acts + a.P, *Y = acts + a.Y, *x = acts + a.x;
    const float *z = acts + a.z, *u = acts + a.u;
    float *du = scratch + s.du, *dz = scratch + s.dz, *dx = scratch + s.dx;
    float *dP = scratch + s.dP, *dY = scratch + s.dY;

    /* head: q = GELU(u), u = head_w z + head_b */
    nfcl_gelu_backward(du, u, dq, d.N * d.C);
    nfcl_linear_backward(dz, grads + p.ow, grads + p.ob, du, z, params + p.ow,
                         d.N, (int)d.C, (int)d.C, 0.0f);

    /* fc: z = ReLU(fc_w x + fc_b); the ReLU passes where z > 0 */
#pragma omp parallel if (d.N * d.C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < d.N * d.C; i++) {
            dz[i] = z[i] > 0.0f ? dz[i] : 0.0f;
        }
    }
    nfcl_linear_backward(dx, grads + p.fw, grads + p.fb, dz, x, params + p.fw,
                         d.N, (int)d.D, (int)d.C, 0.0f);

    /* dropout: the same mask and scale, recomputed from (seed, step) */
    float drop = train ? cfg->dropout : 0.0f;
    uint64_t stream = step * SITES_PER_STEP + SITE_FEATURES;
    nfcl_dropout_forward(dx, d.N * d.D, drop, seed, stream, 0);

    /* the filters, all adding into the padded-row gradient dP */
    memset(dP, 0, (size_t)(d.R * d.C) * sizeof(float));
    vconv_backward(dP, grads + p.vw, grads + p.vb, dx, P, params + p.vw, &d);
    for (int64_t h = 1; h <= d.W; h++) {
        const float *Y_h = Y + (h - 1) * d.R * d.nh;
        pool_backward(dY, dx, d.nv * d.C + (h - 1) * d.nh, Y_h, h, &d);
        hconv_backward(dP, grads + p.hw[h], grads + p.hb[h], dY, P,
                       params + p.hw[h], h, &d);
    }

    /* padded rows back to the item rows (never row 0) */
    embed_backward(grads, rs, dP, items, &d);
    return NFCL_OK;
}
