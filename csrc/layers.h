/*
 * layers.h - dense layer kernels shared by the encoders.
 *
 * Each layer is a <layer>_forward / <layer>_backward pair over caller-owned
 * row-major float32 buffers; none allocates, prints or keeps state. Rows are
 * counted by N (usually B*T). Backward kernels ADD into parameter gradients
 * (dw, db: +=); how each one treats its input gradient is stated per
 * function. Sizes are trusted: the model code validates them first.
 */
#ifndef NFCL_LAYERS_H
#define NFCL_LAYERS_H

#include <stdint.h>

/* Elementwise and row-wise kernels split their work over the core's threads
 * from this many elements up (2^16); every element is computed the same way
 * whatever the split, so results do not depend on the thread count. */
#define NFCL_PAR_MIN ((int64_t)1 << 16)

/* ---------------------------------------------------------------------- */
/* linear: out = inp w^T + b, the torch.nn.Linear convention */

/* out (N,OC), inp (N,IC), w (OC,IC), b (OC) */
void nfcl_linear_forward(float *out, const float *inp, const float *w,
                         const float *b, int64_t N, int IC, int OC);

/* dinp (N,IC) = beta * dinp + dout w  (beta 0 writes, 1 adds);
 * dw (OC,IC) += dout^T inp; db (OC) += column sums of dout (N,OC) */
void nfcl_linear_backward(float *dinp, float *dw, float *db,
                          const float *dout, const float *inp,
                          const float *w, int64_t N, int IC, int OC,
                          float beta);

/* db (C) += column sums of d (N,C), each summed in row order */
void nfcl_colsum_add(float *db, const float *d, int64_t N, int C);

/* ---------------------------------------------------------------------- */
/* LayerNorm over the last axis, eps 1e-5, biased variance (as torch) */

/* out (N,C); mean, rstd (N) saved for backward; inp (N,C); w, b (C) */
void nfcl_layernorm_forward(float *out, float *mean, float *rstd,
                            const float *inp, const float *w,
                            const float *b, int64_t N, int C);

/* dinp (N,C) written; dw, db (C) += */
void nfcl_layernorm_backward(float *dinp, float *dw, float *db,
                             const float *dout, const float *inp,
                             const float *mean, const float *rstd,
                             const float *w, int64_t N, int C);

/* ---------------------------------------------------------------------- */
/* elementwise activations */

/* exact GELU, x * Phi(x): out, inp (n) */
void nfcl_gelu_forward(float *out, const float *inp, int64_t n);

/* dinp (n) written from dout (n) and the forward input inp (n) */
void nfcl_gelu_backward(float *dinp, const float *inp, const float *dout,
                        int64_t n);

/* Inverted dropout in place: x[i] *= keep ? 1/(1-p) : 0, where keep =
 * nfcl_uniform(seed, stream, first + i) >= p. The same call on a gradient
 * is the backward. p <= 0 leaves x unchanged. x (n) */
void nfcl_dropout_forward(float *x, int64_t n, float p, uint64_t seed,
                          uint64_t stream, uint64_t first);

/* a = dropout(ReLU(h)) computed in place: x (n) holds h, then a */
void nfcl_relu_dropout_forward(float *x, int64_t n, float p, uint64_t seed,
                               uint64_t stream);

/* d (n) holds da, becomes dh. a (n) is the forward output: a > 0 exactly
 * when h > 0 and the element was kept, so no mask is recomputed.
 * scale = 1/(1-p) when dropout was on, else 1. */
void nfcl_relu_dropout_backward(float *d, const float *a, int64_t n,
                                float scale);

/* ---------------------------------------------------------------------- */
/* multi-head self-attention core (projections excluded). Sequences run in
 * parallel, up to NFCL_ATTN_SLOTS threads, each with its own work slot. */

#define NFCL_ATTN_SLOTS 8

typedef struct {
    int B, T, C, NH;  /* hs = C / NH */
    int causal;       /* 1 = query t sees keys j <= t */
    float p;          /* dropout on probabilities, 0 = off */
    uint64_t seed;    /* dropout key: nfcl_uniform(seed, stream, i) */
    uint64_t stream;
} nfcl_attn_args;

/* out (B,T,C): head outputs side by side, head h in columns h*hs..;
 * att (B,NH,T,T): probabilities before dropout, saved for backward;
 * work (NFCL_ATTN_SLOTS,T,T): room for one head's dropped probabilities
 * per thread;
 * qkv (B,T,3C): packed q | k | v; items (B,T): keys with item 0 are masked.
 * A query with no visible key gets all-zero probabilities. */
void nfcl_attention_forward(float *out, float *att, float *work,
                            const float *qkv, const int32_t *items,
                            const nfcl_attn_args *a);

/* dqkv (B,T,3C) written; pd, ds (NFCL_ATTN_SLOTS,T,T) work; dout (B,T,C) in;
 * qkv, att as saved by the forward */
void nfcl_attention_backward(float *dqkv, float *pd, float *ds,
                             const float *dout, const float *qkv,
                             const float *att, const nfcl_attn_args *a);

#endif /* NFCL_LAYERS_H */
