/*
 * layers.c - dense layer kernels: linear, LayerNorm, GELU, ReLU, dropout
 * and the attention core. See layers.h for the buffer contracts.
 *
 * Every matrix product goes through nfcl_sgemm; the elementwise passes are
 * plain loops. The model code checks sizes before calling in, so these
 * kernels trust their arguments.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "layers.h"
#include "nfcl.h"
#include "rng.h"

#define LN_EPS 1e-5
#define INV_SQRT2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

/* ---------------------------------------------------------------------- */
/* linear */

void nfcl_linear_forward(float *out, const float *inp, const float *w,
                         const float *b, int64_t N, int IC, int OC)
{
    /* out (N,OC) = inp (N,IC) w^T, w (OC,IC) */
    nfcl_sgemm(0, 1, N, OC, IC, 1.0f, inp, IC, w, IC, 0.0f, out, OC);

    /* bias b (OC) on every row */
#pragma omp parallel if (N * OC >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float *out_n = out + n * OC;
            for (int o = 0; o < OC; o++) {
                out_n[o] += b[o];
            }
        }
    }
}

/* Column sums: each thread takes a range of whole 16-column strips and
 * walks the rows in order, adding each row's slice of its range into a
 * local accumulator (COL_CHUNK columns at a time). Every column is summed
 * in row order whatever the thread count, and no two threads write next to
 * each other while they sum. */
#define COL_STRIP 16
#define COL_CHUNK 256

/* [*c0, *c1): the calling thread's columns, in whole strips (all of them
 * outside a parallel region) */
static void strip_range(int C, int *c0, int *c1)
{
    int k = 0, nt = 1;
#ifdef _OPENMP
    k = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    int64_t strips = (C + COL_STRIP - 1) / COL_STRIP;
    int64_t s0 = strips * k / nt, s1 = strips * (k + 1) / nt;
    *c0 = (int)(s0 * COL_STRIP < C ? s0 * COL_STRIP : C);
    *c1 = (int)(s1 * COL_STRIP < C ? s1 * COL_STRIP : C);
}

void nfcl_colsum_add(float *db, const float *d, int64_t N, int C)
{
#pragma omp parallel if (N * C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
        int c0, c1;
        strip_range(C, &c0, &c1);
        for (int a = c0; a < c1; a += COL_CHUNK) {
            int w = c1 - a < COL_CHUNK ? c1 - a : COL_CHUNK;
            float acc[COL_CHUNK];
            memcpy(acc, db + a, (size_t)w * sizeof(float));
            for (int64_t n = 0; n < N; n++) {
                const float *d_n = d + n * C + a;
                for (int c = 0; c < w; c++) {
                    acc[c] += d_n[c];
                }
            }
            memcpy(db + a, acc, (size_t)w * sizeof(float));
        }
    }
}

void nfcl_linear_backward(float *dinp, float *dw, float *db,
                          const float *dout, const float *inp,
                          const float *w, int64_t N, int IC, int OC,
                          float beta)
{
    /* forward: out = inp w^T + b */

    /* dinp (N,IC) = beta dinp + dout (N,OC) w (OC,IC) */
    nfcl_sgemm(0, 0, N, IC, OC, 1.0f, dout, OC, w, IC, beta, dinp, IC);

    /* dw (OC,IC) += dout^T inp, summed over the N rows by the product */
    nfcl_sgemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dw, IC);

    /* db (OC) += column sums of dout */
    nfcl_colsum_add(db, dout, N, OC);
}

/* ---------------------------------------------------------------------- */
/* LayerNorm */

/* One row: y (C) = (x - mean) * rstd * w + b; returns mean and rstd. The
 * row sums run in double, in vector lanes (omp simd), so their order is
 * fixed by the build's instruction set, never by the thread count. */
NFCL_CLONES
static void ln_row_forward(float *restrict y, float *mean, float *rstd,
                           const float *restrict x, const float *restrict w,
                           const float *restrict b, int C)
{
    /* moments in double: C is small, and it keeps var >= 0 exact */
    double m = 0.0, v = 0.0;
#pragma omp simd reduction(+ : m)
    for (int c = 0; c < C; c++) {
        m += x[c];
    }
    m /= C;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; c++) {
        double d = x[c] - m;
        v += d * d;
    }
    v /= C;
    float s = (float)(1.0 / sqrt(v + LN_EPS));

    /* normalise, scale and shift */
    float mf = (float)m;
#pragma omp simd
    for (int c = 0; c < C; c++) {
        y[c] = (x[c] - mf) * s * w[c] + b[c];
    }
    *mean = mf;
    *rstd = s;
}

/* One row's input gradient: dx = s (g - mean(g) - xhat mean(g xhat)),
 * g = dy w, xhat = (x - m) s; row sums as in ln_row_forward */
NFCL_CLONES
static void ln_row_backward(float *restrict dx, const float *restrict x,
                            const float *restrict dy, const float *restrict w,
                            float m, float s, int C)
{
    double g_mean = 0.0, gx_mean = 0.0;
#pragma omp simd reduction(+ : g_mean, gx_mean)
    for (int c = 0; c < C; c++) {
        float xhat = (x[c] - m) * s;
        float g = dy[c] * w[c];
        g_mean += g;
        gx_mean += g * xhat;
    }
    float g1 = (float)(g_mean / C), g2 = (float)(gx_mean / C);
#pragma omp simd
    for (int c = 0; c < C; c++) {
        float xhat = (x[c] - m) * s;
        dx[c] = s * (dy[c] * w[c] - g1 - xhat * g2);
    }
}

void nfcl_layernorm_forward(float *out, float *mean, float *rstd,
                            const float *inp, const float *w,
                            const float *b, int64_t N, int C)
{
    /* rows are independent; each thread takes whole rows */
#pragma omp parallel if (N * C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            ln_row_forward(out + n * C, mean + n, rstd + n, inp + n * C, w, b,
                           C);
        }
    }
}

void nfcl_layernorm_backward(float *dinp, float *dw, float *db,
                             const float *dout, const float *inp,
                             const float *mean, const float *rstd,
                             const float *w, int64_t N, int C)
{
    /* forward: y = xhat * w + b, xhat = (x - mean) * rstd. Rows are
     * independent; each thread takes whole rows. */
#pragma omp parallel if (N * C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            ln_row_backward(dinp + n * C, inp + n * C, dout + n * C, w,
                            mean[n], rstd[n], C);
        }
    }

    /* parameter gradients: sums over rows, in row order for every column,
     * split as in nfcl_colsum_add */
#pragma omp parallel if (N * C >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
        int c0, c1;
        strip_range(C, &c0, &c1);
        for (int a = c0; a < c1; a += COL_CHUNK) {
            int cw = c1 - a < COL_CHUNK ? c1 - a : COL_CHUNK;
            float acc_w[COL_CHUNK], acc_b[COL_CHUNK];
            memcpy(acc_w, dw + a, (size_t)cw * sizeof(float));
            memcpy(acc_b, db + a, (size_t)cw * sizeof(float));
            for (int64_t n = 0; n < N; n++) {
                const float *x = inp + n * C + a;
                const float *dy = dout + n * C + a;
                float m = mean[n], s = rstd[n];
                for (int c = 0; c < cw; c++) {
                    acc_w[c] += dy[c] * ((x[c] - m) * s);
                    acc_b[c] += dy[c];
                }
            }
            memcpy(dw + a, acc_w, (size_t)cw * sizeof(float));
            memcpy(db + a, acc_b, (size_t)cw * sizeof(float));
        }
    }
}

/* ---------------------------------------------------------------------- */
/* elementwise activations */

void nfcl_gelu_forward(float *out, const float *inp, int64_t n)
{
    /* exact form x * Phi(x), as torch's GELU(approximate='none') */
#pragma omp parallel if (n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            double x = inp[i];
            out[i] = (float)(0.5 * x * (1.0 + erf(x * INV_SQRT2)));
        }
    }
}

void nfcl_gelu_backward(float *dinp, const float *inp, const float *dout,
                        int64_t n)
{
    /* d/dx x Phi(x) = Phi(x) + x phi(x) */
#pragma omp parallel if (n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            double x = inp[i];
            double cdf = 0.5 * (1.0 + erf(x * INV_SQRT2));
            double pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
            dinp[i] = (float)((cdf + x * pdf) * dout[i]);
        }
    }
}

/* the mask loop; its 64-bit multiplies vectorise only with AVX-512 DQ */
static inline __attribute__((always_inline)) void
dropout_body(float *x, int64_t n, float p, uint64_t key, uint64_t first)
{
    /* the keep decision is a pure function of the element's counter, so
     * backward recomputes the same mask; a product by 0 or 1/(1-p)
     * vectorises where a branch would not */
    float scale = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < n; i++) {
        uint64_t c = first + (uint64_t)i;
        float u = nfcl_keyed_uniform(key, c);
        x[i] *= u >= p ? scale : 0.0f;
    }
}

#if NFCL_HAVE_CLONES
__attribute__((target("avx512f,avx512dq"))) static void
dropout_avx512(float *x, int64_t n, float p, uint64_t key, uint64_t first)
{
    dropout_body(x, n, p, key, first);
}
#endif

void nfcl_dropout_forward(float *x, int64_t n, float p, uint64_t seed,
                          uint64_t stream, uint64_t first)
{
    if (!(p > 0.0f)) {
        return;
    }
    uint64_t key = nfcl_stream_key(seed, stream);
#if NFCL_HAVE_CLONES
    int wide = __builtin_cpu_supports("avx512dq");
#endif
    /* chunks of NFCL_PAR_MIN elements; the mask depends on the element's
     * counter only, so the split changes nothing */
    int64_t n_chunks = (n + NFCL_PAR_MIN - 1) / NFCL_PAR_MIN;
#pragma omp parallel if (n_chunks > 1)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < n_chunks; k++) {
            int64_t i0 = k * NFCL_PAR_MIN;
            int64_t len = n - i0 < NFCL_PAR_MIN ? n - i0 : NFCL_PAR_MIN;
    #if NFCL_HAVE_CLONES
            if (wide) {
                dropout_avx512(x + i0, len, p, key, first + (uint64_t)i0);
                continue;
            }
    #endif
            dropout_body(x + i0, len, p, key, first + (uint64_t)i0);
        }
    }
}

void nfcl_relu_dropout_forward(float *x, int64_t n, float p, uint64_t seed,
                               uint64_t stream)
{
#pragma omp parallel if (n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        }
    }
    nfcl_dropout_forward(x, n, p, seed, stream, 0);
}

void nfcl_relu_dropout_backward(float *d, const float *a, int64_t n,
                                float scale)
{
    /* forward: a = keep * max(h, 0) * scale; scale >= 1 so a kept
     * positive h never rounds to 0, and a > 0 marks the live paths */
#pragma omp parallel if (n >= NFCL_PAR_MIN)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            d[i] *= a[i] > 0.0f ? scale : 0.0f; /* a product vectorises */
        }
    }
}

/* ---------------------------------------------------------------------- */
/* attention */

/* threads for a loop over B sequences: at most NFCL_ATTN_SLOTS (the work
 * slots the caller provides), at most B, at least 1 */
static int attn_threads(int B)
{
#ifdef _OPENMP
    int n = omp_get_max_threads();
#else
    int n = 1;
#endif
    n = n < NFCL_ATTN_SLOTS ? n : NFCL_ATTN_SLOTS;
    return n < B ? n : (B < 1 ? 1 : B);
}

/* this thread's work slot */
static int slot(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Softmax of one score row (T) in place over the visible keys: j < n_vis
 * and items_b[j] != 0. Hidden keys get probability 0, and a row with no
 * visible key is all zeros rather than NaN. */
static void masked_softmax_row(float *row, const int32_t *items_b, int T,
                               int n_vis)
{
    /* pass 1: max over visible keys, for a safe exp */
    float maxv = -INFINITY;
    for (int j = 0; j < n_vis; j++) {
        if (items_b[j] != 0 && row[j] > maxv) {
            maxv = row[j];
        }
    }
    if (maxv == -INFINITY) {
        memset(row, 0, (size_t)T * sizeof(float));
        return;
    }

    /* pass 2: exponentiate and sum; hidden keys become 0, and so do keys
     * whose probability would be subnormal (see fastmath.h) */
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < T; j++) {
        float e = nfcl_exp_nonpos(row[j] - maxv);
        e = j < n_vis && items_b[j] != 0 ? e : 0.0f;
        row[j] = e;
        sum += e;
    }

    /* pass 3: normalise (sum >= 1, the max key contributes exp(0)) */
    float inv = 1.0f / sum;
    for (int j = 0; j < n_vis; j++) {
        row[j] *= inv;
    }
}

void nfcl_attention_forward(float *out, float *att, float *work,
                            const float *qkv, const int32_t *items,
                            const nfcl_attn_args *a)
{
    int T = a->T, C = a->C, NH = a->NH, hs = C / NH;
    int64_t C3 = 3 * (int64_t)C, TT = (int64_t)T * T;
    float scale = 1.0f / sqrtf((float)hs);

    /* sequences are independent: each thread takes a fixed range of b and
     * its own work slot, so the result does not depend on the split */
#pragma omp parallel for schedule(static) num_threads(attn_threads(a->B))
    for (int b = 0; b < a->B; b++) {
        unsigned fp = nfcl_fp_fast();
        float *work_t = work + (int64_t)slot() * TT;
        const int32_t *items_b = items + (int64_t)b * T;
        const float *qkv_b = qkv + (int64_t)b * T * C3;
        for (int h = 0; h < NH; h++) {
            /* q_bh, k_bh, v_bh (T,hs) with row stride 3C */
            const float *q_bh = qkv_b + (int64_t)h * hs;
            const float *k_bh = q_bh + C;
            const float *v_bh = q_bh + 2 * (int64_t)C;
            int64_t bh = (int64_t)b * NH + h;
            float *att_bh = att + bh * TT;

            /* scores (T,T) = scale q k^T; this is where positions mix */
            nfcl_sgemm(0, 1, T, T, hs, scale, q_bh, C3, k_bh, C3, 0.0f,
                       att_bh, T);
            for (int t = 0; t < T; t++) {
                int n_vis = a->causal ? t + 1 : T;
                masked_softmax_row(att_bh + t * T, items_b, T, n_vis);
            }

            /* dropout on a copy: backward needs the clean probabilities */
            const float *pd = att_bh;
            if (a->p > 0.0f) {
                memcpy(work_t, att_bh, (size_t)TT * sizeof(float));
                nfcl_dropout_forward(work_t, TT, a->p, a->seed, a->stream,
                                     (uint64_t)(bh * TT));
                pd = work_t;
            }

            /* out_bh (T,hs) = pd v_bh, written into columns h*hs.. */
            float *out_bh = out + (int64_t)b * T * C + (int64_t)h * hs;
            nfcl_sgemm(0, 0, T, hs, T, 1.0f, pd, T, v_bh, C3, 0.0f, out_bh,
                       C);
        }
        nfcl_fp_restore(fp);
    }
}

/* Softmax backward for one (b,h), through the probability dropout, in
 * place on ds (T,T). Forward: P = softmax(S), pd = P * keep / (1-p), so
 * dS_j = P_j (dP_j - sum_i P_i dP_i) with dP = dpd * keep / (1-p). Both
 * P_j dP_j terms equal pd_j dpd_j, which removes the mask from the sum. */
static void softmax_backward(float *ds, const float *pd, const float *att,
                             int T)
{
    for (int t = 0; t < T; t++) {
        float *ds_t = ds + (int64_t)t * T;
        const float *pd_t = pd + (int64_t)t * T;
        const float *p_t = att + (int64_t)t * T;
        float dot = 0.0f;
        for (int j = 0; j < T; j++) {
            dot += pd_t[j] * ds_t[j];
        }
        for (int j = 0; j < T; j++) {
            ds_t[j] = pd_t[j] * ds_t[j] - p_t[j] * dot;
        }
    }
}

void nfcl_attention_backward(float *dqkv, float *pd, float *ds,
                             const float *dout, const float *qkv,
                             const float *att, const nfcl_attn_args *a)
{
    int T = a->T, C = a->C, NH = a->NH, hs = C / NH;
    int64_t C3 = 3 * (int64_t)C, TT = (int64_t)T * T;
    float scale = 1.0f / sqrtf((float)hs);

#pragma omp parallel for schedule(static) num_threads(attn_threads(a->B))
    for (int b = 0; b < a->B; b++) {
        unsigned fp = nfcl_fp_fast();
        float *pd_t = pd + (int64_t)slot() * TT, *ds_t = ds + (int64_t)slot() * TT;
        const float *qkv_b = qkv + (int64_t)b * T * C3;
        float *dqkv_b = dqkv + (int64_t)b * T * C3;
        for (int h = 0; h < NH; h++) {
            /* per-head views (T,hs), row stride 3C or C */
            int64_t off = (int64_t)h * hs;
            const float *q_bh = qkv_b + off, *k_bh = q_bh + C;
            const float *v_bh = q_bh + 2 * (int64_t)C;
            float *dq_bh = dqkv_b + off, *dk_bh = dq_bh + C;
            float *dv_bh = dq_bh + 2 * (int64_t)C;
            const float *dout_bh = dout + (int64_t)b * T * C + off;
            int64_t bh = (int64_t)b * NH + h;
            const float *att_bh = att + bh * TT;

            /* pd (T,T): the probabilities the forward mixed with */
            const float *pd_bh = att_bh;
            if (a->p > 0.0f) {
                memcpy(pd_t, att_bh, (size_t)TT * sizeof(float));
                nfcl_dropout_forward(pd_t, TT, a->p, a->seed, a->stream,
                                     (uint64_t)(bh * TT));
                pd_bh = pd_t;
            }

            /* forward out_bh = pd v_bh: dpd = dout v^T, dv = pd^T dout */
            nfcl_sgemm(0, 1, T, T, hs, 1.0f, dout_bh, C, v_bh, C3, 0.0f, ds_t,
                       T);
            nfcl_sgemm(1, 0, T, hs, T, 1.0f, pd_bh, T, dout_bh, C, 0.0f,
                       dv_bh, C3);

            /* through the softmax: ds becomes d(scores) */
            softmax_backward(ds_t, pd_bh, att_bh, T);

            /* forward S = scale q k^T: dq = scale ds k, dk = scale ds^T q */
            nfcl_sgemm(0, 0, T, hs, T, scale, ds_t, T, k_bh, C3, 0.0f, dq_bh,
                       C3);
            nfcl_sgemm(1, 0, T, hs, T, scale, ds_t, T, q_bh, C3, 0.0f, dk_bh,
                       C3);
        }
        nfcl_fp_restore(fp);
    }
}
