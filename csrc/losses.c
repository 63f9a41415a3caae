/*
 * losses.c - the training losses: candidate sampling for the sampled
 * softmax, the softmax cross-entropy of the next-item task and the
 * skip-aware InfoNCE.
 *
 * Each loss writes its value and adds scale * d(loss) into dq and demb (+=),
 * so several losses can share one gradient buffer. Reductions that decide a
 * value (log-sum-exp, norms, the mean over rows) run in double; the large
 * products go through nfcl_sgemm.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "fastmath.h"
#include "nfcl.h"

/* torch.nn.functional.normalize's default floor on the norm */
#define UNIT_EPS 1e-12

/* floats of logits held at once by the cross-entropy (4 MiB), so a block
 * stays in cache between its product and its softmax pass; but at least
 * XENT_MIN_ROWS rows, so a large catalogue's dE product keeps a useful
 * shape and demb is not streamed once per handful of rows */
#define XENT_BLOCK_FLOATS ((int64_t)1 << 20)

#define XENT_MIN_ROWS 64

/* ---------------------------------------------------------------------- */
/* candidate sampling */

static int cmp_int32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* index of id in the sorted array s (U), or -1 */
static int64_t sorted_find(const int32_t *s, int64_t U, int32_t id)
{
    int64_t lo = 0, hi = U;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (s[mid] < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < U && s[lo] == id ? lo : -1;
}

/* The r-th (0-based) id of 1..V-1 once the sorted targets s (U) are taken
 * out. Below s[i] lie s[i] - 1 - i non-targets, a non-decreasing count, so
 * a binary search finds how many targets precede the answer. */
static int32_t nth_free_id(const int32_t *s, int64_t U, int64_t r)
{
    int64_t lo = 0, hi = U;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if ((int64_t)s[mid] - 1 - mid <= r) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (int32_t)(r + 1 + lo);
}

/* Floyd's sampler: m distinct draws from the M free ids, exactly m hash
 * calls, so the result is a pure function of (seed, stream). seen marks the
 * ids already drawn; the caller clears it. */
static void draw_negatives(const int32_t *s, int64_t U, int64_t M, int64_t m,
                           uint64_t seed, uint64_t stream, uint8_t *seen,
                           int32_t *out)
{
    for (int64_t i = 0; i < m; i++) {
        int64_t j = M - m + i;

        /* r uniform in 0..j; the modulo bias of a 64-bit hash is < 2^-32 */
        uint64_t h = nfcl_hash3(seed, stream, (uint64_t)i);
        int64_t r = (int64_t)(h % (uint64_t)(j + 1));
        int32_t id = nth_free_id(s, U, r);
        if (seen[id]) {
            id = nth_free_id(s, U, j);
        }
        seen[id] = 1;
        out[i] = id;
    }
}

int nfcl_sample_candidates(const int32_t *targets, int64_t N, int64_t V,
                           int64_t n_neg, uint64_t seed, uint64_t stream,
                           uint8_t *seen, int32_t *cand, int64_t *K,
                           int32_t *tgt_idx)
{
    if (N < 0 || n_neg < 0 || V < 2 || V > (int64_t)INT32_MAX + 1 ||
        N > NFCL_MAX_ELEMS || n_neg > NFCL_MAX_ELEMS) {
        return NFCL_E_SIZE;
    }
    for (int64_t n = 0; n < N; n++) {
        if (targets[n] < 0 || targets[n] >= V) {
            return NFCL_E_RANGE;
        }
    }

    /* unique non-zero targets in order of first appearance */
    int64_t U = 0;
    for (int64_t n = 0; n < N; n++) {
        int32_t id = targets[n];
        if (id != 0 && !seen[id]) {
            seen[id] = 1;
            cand[U++] = id;
        }
    }
    for (int64_t u = 0; u < U; u++) {
        seen[cand[u]] = 0;
    }
    int64_t M = V - 1 - U; /* ids left to draw from */
    if (n_neg > M) {
        return NFCL_E_CANDIDATES;
    }

    /* sorted copy (U): maps targets to their slot and ranks the free ids */
    int32_t *s = malloc((size_t)(U > 0 ? U : 1) * sizeof(int32_t));
    if (s == NULL) {
        return NFCL_E_NOMEM;
    }
    memcpy(s, cand, (size_t)U * sizeof(int32_t));
    qsort(s, (size_t)U, sizeof(int32_t), cmp_int32);

    /* tgt_idx through a second sorted index: slot of s[i] in cand */
    int32_t *slot = malloc((size_t)(U > 0 ? U : 1) * sizeof(int32_t));
    if (slot == NULL) {
        free(s);
        return NFCL_E_NOMEM;
    }
    for (int64_t u = 0; u < U; u++) {
        slot[sorted_find(s, U, cand[u])] = (int32_t)u;
    }
    for (int64_t n = 0; n < N; n++) {
        tgt_idx[n] = targets[n] == 0 ? -1 : slot[sorted_find(s, U, targets[n])];
    }

    /* the negatives, then leave seen as it came: all zero */
    draw_negatives(s, U, M, n_neg, seed, stream, seen, cand + U);
    for (int64_t i = 0; i < n_neg; i++) {
        seen[cand[U + i]] = 0;
    }
    *K = U + n_neg;
    free(slot);
    free(s);
    return NFCL_OK;
}

/* ---------------------------------------------------------------------- */
/* softmax cross-entropy */

static int all_finite(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

/* Turn one row of logits z (K) into its gradient g * (softmax - onehot),
 * writing the row's negative log-likelihood to *nll. An ignored row
 * (tgt < 0) becomes zeros with nll 0. Returns 0 if the row's loss is not
 * finite. The passes are SIMD loops; the sum of exponentials is kept in
 * double. */
NFCL_CLONES
static int xent_row(float *z, int64_t K, int32_t tgt, float g, double *nll)
{
    *nll = 0.0;
    if (tgt < 0) {
        memset(z, 0, (size_t)K * sizeof(float));
        return 1;
    }

    /* stable log-sum-exp: shift by the row max, keep exp(z - max) in z */
    float mx = z[0];
#pragma omp simd reduction(max : mx)
    for (int64_t k = 0; k < K; k++) {
        mx = z[k] > mx ? z[k] : mx;
    }
    double zt = (double)z[tgt], sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < K; k++) {
        float e = nfcl_exp_nonpos(z[k] - mx);
        z[k] = e;
        sum += (double)e;
    }
    double row = (double)mx + log(sum) - zt;
    if (!isfinite(row)) {
        return 0;
    }
    *nll = row;

    /* gradient of the row's loss, pre-scaled by g = scale / n_valid */
    float f = (float)((double)g / sum);
#pragma omp simd
    for (int64_t k = 0; k < K; k++) {
        z[k] *= f;
    }
    z[tgt] -= g;
    return 1;
}

/* inputs of the cross-entropy that hold up every later step */
static int xent_check(int64_t N, int C, int64_t V, const int32_t *cand,
                      int64_t K, const int32_t *tgt_idx, int64_t *n_valid)
{
    if (N < 1 || C < 1 || V < 2 || K < 1 || !nfcl_fits_blas(N, K, C) ||
        N > NFCL_MAX_ELEMS / C || V > NFCL_MAX_ELEMS / C) {
        return NFCL_E_SIZE;
    }
    if (cand == NULL && K != V - 1) {
        return NFCL_E_ARG;
    }
    if (cand != NULL && nfcl_check_ids(cand, K, 1, V) != NFCL_OK) {
        return NFCL_E_RANGE;
    }
    *n_valid = 0;
    for (int64_t n = 0; n < N; n++) {
        if (tgt_idx[n] < -1 || tgt_idx[n] >= K) {
            return NFCL_E_RANGE;
        }
        *n_valid += tgt_idx[n] >= 0;
    }
    return NFCL_OK;
}

/* Ecand (K,C): the candidate rows, gathered into ecand, or emb + C itself
 * when the candidates are the whole catalogue. NULL on a failed malloc. */
static const float *xent_gather(const float *emb, int C, const int32_t *cand,
                                int64_t K, float **ecand)
{
    *ecand = NULL;
    if (cand == NULL) {
        return emb + C;
    }
    *ecand = malloc((size_t)K * (size_t)C * sizeof(float));
    if (*ecand == NULL) {
        return NULL;
    }
    for (int64_t k = 0; k < K; k++) {
        memcpy(*ecand + k * C, emb + (int64_t)cand[k] * C,
               (size_t)C * sizeof(float));
    }
    return *ecand;
}

/* Logits and gradients over blocks of rows: z (nb,K) is the one scratch.
 * dE (K,C) receives G^T Q: emb + C directly for the full catalogue (its
 * rows 1..V-1 are contiguous), else a zeroed scratch scattered later. */
static int xent_blocks(const float *q, int64_t N, int C, const float *E,
                       int64_t K, const int32_t *tgt_idx, float g,
                       float *z, double *row_nll, int64_t nb, float *dq,
                       float *dE, double *nll)
{
    for (int64_t r0 = 0; r0 < N; r0 += nb) {
        int64_t nr = N - r0 < nb ? N - r0 : nb;
        const float *qb = q + r0 * C;

        /* z (nr,K) = Q[r0:r0+nr] Ecand^T, then softmax - onehot in place */
        nfcl_sgemm(0, 1, nr, K, C, 1.0f, qb, C, E, C, 0.0f, z, K);
        int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
        for (int64_t r = 0; r < nr; r++) {
            unsigned fp = nfcl_fp_fast(); /* worker threads too */
            bad |= !xent_row(z + r * K, K, tgt_idx[r0 + r], g, row_nll + r);
            nfcl_fp_restore(fp);
        }
        if (bad) {
            return NFCL_E_NONFINITE;
        }
        for (int64_t r = 0; r < nr; r++) { /* fixed order, any thread count */
            *nll += row_nll[r];
        }

        /* dq (nr,C) += G Ecand; dEcand (K,C) += G^T Q */
        nfcl_sgemm(0, 0, nr, C, K, 1.0f, z, K, E, C, 1.0f, dq + r0 * C, C);
        nfcl_sgemm(1, 0, K, C, nr, 1.0f, z, K, qb, C, 1.0f, dE, C);
    }
    return NFCL_OK;
}

int nfcl_softmax_xent(const float *q, int64_t N, int C, const float *emb,
                      int64_t V, const int32_t *cand, int64_t K,
                      const int32_t *tgt_idx, float scale, float *loss,
                      float *dq, float *demb, nfcl_rowset *rs)
{
    int64_t n_valid = 0;
    int status = xent_check(N, C, V, cand, K, tgt_idx, &n_valid);
    if (status != NFCL_OK) {
        return status;
    }
    *loss = 0.0f;
    if (n_valid == 0) {
        return NFCL_OK;
    }

    /* Ecand (K,C), gathered or in place. Non-finite inputs are refused up
     * front, so no gradient is written when the loss cannot be finite; all
     * of q is checked, as an ignored row still meets G^T Q as 0 * x. */
    float *ecand;
    const float *E = xent_gather(emb, C, cand, K, &ecand);
    if (E == NULL) {
        return NFCL_E_NOMEM;
    }
    if (!all_finite(q, N * C) || !all_finite(E, K * C)) {
        free(ecand);
        return NFCL_E_NONFINITE;
    }

    /* scratch: z (nb,K) logits, dEcand (K,C) for a candidate list */
    int64_t nb = XENT_BLOCK_FLOATS / K;
    nb = nb < XENT_MIN_ROWS ? XENT_MIN_ROWS : nb;
    nb = nb > N ? N : nb;
    float *z = malloc((size_t)nb * (size_t)K * sizeof(float));
    double *row_nll = malloc((size_t)nb * sizeof(double));
    float *dE = cand == NULL ? demb + C : calloc((size_t)K * (size_t)C, sizeof(float));
    if (z == NULL || row_nll == NULL || dE == NULL) {
        if (cand != NULL) {
            free(dE);
        }
        free(row_nll);
        free(z);
        free(ecand);
        return NFCL_E_NOMEM;
    }

    /* blocks of rows; on overflow dq and demb may hold part of the sum */
    double nll = 0.0;
    float g = scale / (float)n_valid;
    status = xent_blocks(q, N, C, E, K, tgt_idx, g, z, row_nll, nb, dq, dE, &nll);

    /* scatter dEcand into demb; every candidate row got gradient */
    for (int64_t k = 0; status == NFCL_OK && k < K; k++) {
        int32_t id = cand == NULL ? (int32_t)(k + 1) : cand[k];
        if (cand != NULL) {
            float *dst = demb + (int64_t)id * C;
            for (int c = 0; c < C; c++) {
                dst[c] += dE[k * C + c];
            }
        }
        nfcl_rowset_mark(rs, id);
    }
    if (cand != NULL) {
        free(dE);
    }
    free(row_nll);
    free(z);
    free(ecand);
    *loss = status == NFCL_OK ? (float)(nll / (double)n_valid) : 0.0f;
    return status;
}

/* ---------------------------------------------------------------------- */
/* skip-aware InfoNCE */

/* u (C) = x / max(||x||, eps), like torch's F.normalize; returns ||x|| */
static double unit_forward(const float *x, int C, double *u)
{
    double ss = 0.0;
    for (int c = 0; c < C; c++) {
        ss += (double)x[c] * (double)x[c];
    }
    double nrm = sqrt(ss);
    double div = nrm > UNIT_EPS ? nrm : UNIT_EPS;
    for (int c = 0; c < C; c++) {
        u[c] = (double)x[c] / div;
    }
    return nrm;
}

/* dx (C) += w * d(unit)/dx^T du. Above the floor the Jacobian is
 * (I - u u^T) / ||x||; below it the divisor is a constant, so I / eps. */
static void unit_backward(const double *u, double nrm, const double *du,
                          int C, double w, float *dx)
{
    if (!(nrm > UNIT_EPS)) {
        for (int c = 0; c < C; c++) {
            dx[c] += (float)(w * du[c] / UNIT_EPS);
        }
        return;
    }
    double ud = 0.0;
    for (int c = 0; c < C; c++) {
        ud += u[c] * du[c];
    }
    for (int c = 0; c < C; c++) {
        dx[c] += (float)(w * (du[c] - u[c] * ud) / nrm);
    }
}

/* Work space of one InfoNCE call. A "slot" is a session position b*(T+1)+j
 * whose item embedding serves as a key; a "row" is a query b*T+t. */
typedef struct {
    int B, T, C, variant;
    double inv_tau;
    const int32_t *items; /* (B,T+1) */
    const uint8_t *skips; /* (B,T+1) */
    double *uq;           /* (B,T,C) unit queries of anchor rows */
    double *gq;           /* (B,T,C) d(sum of row losses)/d(unit query) */
    double *nq;           /* (B,T) query norms */
    double *uk;           /* (B,T+1,C) unit keys of non-padding slots */
    double *gk;           /* (B,T+1,C) d(sum of row losses)/d(unit key) */
    double *nk;           /* (B,T+1) key norms */
    int32_t *pos;         /* (B,T) positive position j of an anchor, or -1 */
    uint8_t *used;        /* (B,T+1) slot took part in some row */
    uint8_t *anchor;      /* (B,T) row entered the mean */
    int64_t *keys;        /* (T+2) slots of one row: positive first, -1 = zero */
    double *logit;        /* (T+2) logits of one row */
} infonce_ws;

static void infonce_free(infonce_ws *w)
{
    free(w->uq);
    free(w->uk);
    free(w->pos);
    free(w->used);
    free(w->keys);
}

/* one malloc per element type; NFCL_E_NOMEM if any fails */
static int infonce_alloc(infonce_ws *w)
{
    int64_t BT = (int64_t)w->B * w->T, BS = (int64_t)w->B * (w->T + 1);
    int64_t C = w->C;
    w->uq = calloc((size_t)(2 * BT * C + BT), sizeof(double));
    w->uk = calloc((size_t)(2 * BS * C + BS), sizeof(double));
    w->pos = malloc((size_t)BT * sizeof(int32_t));
    w->used = calloc((size_t)(BS + BT), 1);
    w->keys = malloc((size_t)(w->T + 2) * (sizeof(int64_t) + sizeof(double)));
    if (!w->uq || !w->uk || !w->pos || !w->used || !w->keys) {
        infonce_free(w);
        return NFCL_E_NOMEM;
    }
    w->gq = w->uq + BT * C;
    w->nq = w->gq + BT * C;
    w->gk = w->uk + BS * C;
    w->nk = w->gk + BS * C;
    w->anchor = w->used + BS;
    w->logit = (double *)(w->keys + w->T + 2);
    return NFCL_OK;
}

/* Positives by one backward sweep per session: an anchor is a kept
 * (non-skipped, non-padding) position t < T with a kept position after it,
 * and its positive is the first such position. When the caller gives the
 * positives (pos_in), those are used instead. Unit vectors of every
 * non-padding slot and of every anchor's query. */
static void infonce_prepare(infonce_ws *w, const float *q, const float *emb,
                            const int32_t *pos_in)
{
    int T = w->T, S = w->T + 1, C = w->C;
    for (int b = 0; b < w->B; b++) {
        const int32_t *it = w->items + (int64_t)b * S;
        const uint8_t *sk = w->skips + (int64_t)b * S;
        int32_t next = -1;
        for (int j = T; j >= 0; j--) {
            int kept = it[j] != 0 && sk[j] == 0;
            int64_t s = (int64_t)b * S + j, r = (int64_t)b * T + j;
            if (it[j] != 0) {
                w->nk[s] = unit_forward(emb + (int64_t)it[j] * C, C, w->uk + s * C);
            }
            if (j < T) {
                w->pos[r] = pos_in != NULL ? pos_in[r] : kept ? next : -1;
            }
            if (j < T && w->pos[r] >= 0) {
                w->nq[r] = unit_forward(q + r * C, C, w->uq + r * C);
            }
            next = kept ? j : next;
        }
    }
}

/* given positives must name a non-padding slot of the row's own session */
static int infonce_check_pos(const int32_t *pos, const int32_t *items, int B,
                             int T)
{
    for (int64_t r = 0; r < (int64_t)B * T; r++) {
        int64_t b = r / T;
        if (pos[r] < -1 || pos[r] > T ||
            (pos[r] >= 0 && items[b * (T + 1) + pos[r]] == 0)) {
            return NFCL_E_RANGE;
        }
    }
    return NFCL_OK;
}

/* Key slots of row r (an anchor with positive pos): the positive, then
 * variant 0: each skipped item of the row's own session, positions 0..T;
 * variant 1: slots 0..T-1 of session r mod B, -1 (a zero vector) for any
 * slot that is not a skipped item. Returns the count. */
static int infonce_keys(const infonce_ws *w, int64_t r, int32_t pos)
{
    int S = w->T + 1;
    int64_t b = r / w->T;
    int64_t b2 = w->variant == 0 ? b : r % w->B;
    int n_slots = w->variant == 0 ? S : w->T;
    int n = 0;
    w->keys[n++] = b * S + pos;
    for (int j = 0; j < n_slots; j++) {
        int64_t s = b2 * S + j;
        int neg = w->items[s] != 0 && w->skips[s] == 1;
        if (neg || w->variant == 1) {
            w->keys[n++] = neg ? s : -1;
        }
    }
    return n;
}

/* One anchor row with n keys: returns -log softmax(logits)[0] and adds the
 * gradient of that value into gq (row r) and gk (the keys' slots). */
static double infonce_row(infonce_ws *w, int64_t r, int n)
{
    int C = w->C;
    const double *u = w->uq + r * C;

    /* logits: cosine / tau; a zero-vector slot has cosine exactly 0 */
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        double d = 0.0;
        const double *k = w->keys[i] >= 0 ? w->uk + w->keys[i] * C : NULL;
        for (int c = 0; k != NULL && c < C; c++) {
            d += u[c] * k[c];
        }
        w->logit[i] = d * w->inv_tau;
        mx = w->logit[i] > mx ? w->logit[i] : mx;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += exp(w->logit[i] - mx);
    }
    double lse = mx + log(sum);
    double nll = lse - w->logit[0];

    /* d nll / d logit_i = softmax_i - [i == 0], chained through the dots */
    double *gu = w->gq + r * C;
    for (int i = 0; i < n; i++) {
        double a = (exp(w->logit[i] - lse) - (i == 0)) * w->inv_tau;
        if (w->keys[i] < 0) {
            continue;
        }
        const double *k = w->uk + w->keys[i] * C;
        double *gk = w->gk + w->keys[i] * C;
        for (int c = 0; c < C; c++) {
            gu[c] += a * k[c];
            gk[c] += a * u[c];
        }
        w->used[w->keys[i]] = 1;
    }
    return nll;
}

/* Back through the normalisations into dq and the item rows of demb, each
 * gradient times wgt = scale / (rows in the mean); marks rows in rs. */
static void infonce_scatter(const infonce_ws *w, double wgt, float *dq,
                            float *demb, nfcl_rowset *rs)
{
    int C = w->C;
    int64_t BT = (int64_t)w->B * w->T, BS = (int64_t)w->B * (w->T + 1);
    for (int64_t r = 0; r < BT; r++) {
        if (w->anchor[r]) {
            unit_backward(w->uq + r * C, w->nq[r], w->gq + r * C, C, wgt,
                          dq + r * C);
        }
    }
    for (int64_t s = 0; s < BS; s++) {
        if (w->used[s]) {
            int32_t id = w->items[s];
            unit_backward(w->uk + s * C, w->nk[s], w->gk + s * C, C, wgt,
                          demb + (int64_t)id * C);
            nfcl_rowset_mark(rs, id);
        }
    }
}

/* sum of row losses over all rows; *n_mean = rows the mean divides by */
static double infonce_sum(infonce_ws *w, int64_t *n_mean)
{
    int64_t BT = (int64_t)w->B * w->T, n_anchor = 0;
    double total = 0.0;
    for (int64_t r = 0; r < BT; r++) {
        if (w->pos[r] < 0) {
            /* variant 1: zero query and positive, T+1 logits of 0 */
            total += w->variant == 1 ? log((double)w->T + 1.0) : 0.0;
            continue;
        }
        int n = infonce_keys(w, r, w->pos[r]);
        if (n < 2) {
            continue; /* variant 0: no skipped item in the session */
        }
        total += infonce_row(w, r, n);
        w->anchor[r] = 1;
        n_anchor++;
    }
    *n_mean = w->variant == 0 ? n_anchor : BT;
    return total;
}

int nfcl_infonce(const float *q, int B, int T, int C, const float *emb,
                 int64_t V, const int32_t *items, const uint8_t *skips,
                 const int32_t *pos, float tau, int variant, float scale,
                 float *loss, int64_t *n_anchors, float *dq, float *demb,
                 nfcl_rowset *rs)
{
    if (B < 1 || T < 1 || C < 1 || V < 1 ||
        (int64_t)B * (T + 1) > NFCL_MAX_ELEMS / C) {
        return NFCL_E_SIZE;
    }
    if ((variant != 0 && variant != 1) || !(tau > 0.0f) || !isfinite(tau)) {
        return NFCL_E_ARG;
    }
    for (int64_t s = 0; s < (int64_t)B * (T + 1); s++) {
        if (items[s] < 0 || items[s] >= V) {
            return NFCL_E_RANGE;
        }
    }
    if (pos != NULL && infonce_check_pos(pos, items, B, T) != NFCL_OK) {
        return NFCL_E_RANGE;
    }

    /* all work lands in double scratch; dq and demb change only once the
     * loss is known to be finite */
    infonce_ws w = {.B = B, .T = T, .C = C, .variant = variant,
                    .inv_tau = 1.0 / (double)tau, .items = items,
                    .skips = skips};
    if (infonce_alloc(&w) != NFCL_OK) {
        return NFCL_E_NOMEM;
    }
    infonce_prepare(&w, q, emb, pos);
    int64_t n_mean = 0;
    double total = infonce_sum(&w, &n_mean);
    if (!isfinite(total)) {
        infonce_free(&w);
        return NFCL_E_NONFINITE;
    }
    *loss = n_mean > 0 ? (float)(total / (double)n_mean) : 0.0f;
    *n_anchors = n_mean;
    if (n_mean > 0) {
        infonce_scatter(&w, (double)scale / (double)n_mean, dq, demb, rs);
    }
    infonce_free(&w);
    return NFCL_OK;
}
