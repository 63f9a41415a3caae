/*
 * rank.c - evaluation: the rank of each row's target among candidate
 * items, and the top-k items of each row.
 *
 * Both stream the catalogue in blocks of items scored by one sgemm into an
 * (rows, block) scratch, so memory stays O(rows x block) for any V.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "nfcl.h"

#define ITEM_BLOCK 4096 /* items scored per sgemm */
#define ROW_BLOCK 1024  /* rows of q scored per sgemm */

/* ---------------------------------------------------------------------- */
/* block scoring */

/* id of the i-th candidate: cand[i], or item i + 1 of the full catalogue */
static int32_t cand_id(const int32_t *cand, int64_t i)
{
    return cand != NULL ? cand[i] : (int32_t)(i + 1);
}

/* S (nr,nb) = Q (nr,C) x E^T for candidates i0..i0+nb-1. With a candidate
 * list their rows are first gathered into eb (nb,C); the full catalogue's
 * rows are contiguous in emb and used in place. */
static void score_block(const float *Q, int64_t nr, int C, const float *emb,
                        const int32_t *cand, int64_t i0, int64_t nb,
                        float *eb, float *S)
{
    const float *E = emb + (i0 + 1) * C;
    if (cand != NULL) {
        for (int64_t i = 0; i < nb; i++) {
            memcpy(eb + i * C, emb + (int64_t)cand[i0 + i] * C,
                   (size_t)C * sizeof(float));
        }
        E = eb;
    }
    nfcl_sgemm(0, 1, nr, nb, C, 1.0f, Q, C, E, C, 0.0f, S, nb);
}

/* q . e with exact products and a double sum: the reference score where
 * sgemm's rounding could decide an order or a tie */
static double dot_exact(const float *a, const float *b, int C)
{
    double s = 0.0;
    for (int c = 0; c < C; c++) {
        s += (double)a[c] * (double)b[c];
    }
    return s;
}

static double norm2(const float *x, int C)
{
    return sqrt(dot_exact(x, x, C));
}

static int all_finite(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

/* Sizes shared by both entry points; cand ids must be catalogue items.
 * q and the scored rows must be finite, which keeps NaN out of the
 * comparisons below (an overflowing score is still ordered correctly). */
static int eval_check(const float *q, int64_t N, int C, const float *emb,
                      int64_t V, const int32_t *cand, int64_t K)
{
    if (N < 1 || C < 1 || V < 2 || K < 1 || V > (int64_t)INT32_MAX + 1 ||
        !nfcl_fits_blas(N, K, C) || N > NFCL_MAX_ELEMS / C ||
        V > NFCL_MAX_ELEMS / C) {
        return NFCL_E_SIZE;
    }
    if (cand == NULL && K != V - 1) {
        return NFCL_E_ARG;
    }
    if (cand != NULL && nfcl_check_ids(cand, K, 1, V) != NFCL_OK) {
        return NFCL_E_RANGE;
    }
    int ok = all_finite(q, N * C) && (cand != NULL || all_finite(emb + C, K * C));
    for (int64_t k = 0; ok && cand != NULL && k < K; k++) {
        ok = all_finite(emb + (int64_t)cand[k] * C, C);
    }
    return ok ? NFCL_OK : NFCL_E_NONFINITE;
}

/* ---------------------------------------------------------------------- */
/* rank of the target */

/* State of one row block. sgemm's float score of an item differs from the
 * exact dot by at most about C u ||q|| ||e|| (u = 2^-24), whatever its
 * summation order. Only items within twice that bound of the target's
 * exact score are re-scored exactly, so the counts are those of the exact
 * scores and do not depend on the block an item falls in. */
typedef struct {
    const float *q;      /* (nr,C) rows of this block */
    const float *emb;    /* (V,C) */
    const int32_t *tgt;  /* (nr) */
    int C;
    double *st;          /* (nr) exact target scores */
    double *qn;          /* (nr) ||q|| */
    int64_t *greater;    /* (nr) out */
    int64_t *ties;       /* (nr) out */
} rank_rows;

/* an item near the target's score: compare exact scores, the target
 * itself (known by its id, not its score) left out */
static void rank_close(const rank_rows *w, int64_t r, int32_t id)
{
    if (id == w->tgt[r]) {
        return;
    }
    double x = dot_exact(w->q + r * w->C, w->emb + (int64_t)id * w->C, w->C);
    w->greater[r] += x > w->st[r];
    w->ties[r] += x == w->st[r];
}

/* float bounds no tighter than the double ones: *lo <= lo, *hi >= hi */
static void float_window(double lo, double hi, float *flo, float *fhi)
{
    *flo = (float)lo;
    *fhi = (float)hi;
    if ((double)*flo > lo) {
        *flo = nextafterf(*flo, -INFINITY);
    }
    if ((double)*fhi < hi) {
        *fhi = nextafterf(*fhi, INFINITY);
    }
}

/* Counts for the rows of one item block, S (nr,nb). The window around the
 * target's score uses the block's largest ||e||; a first pass counts the
 * clear wins and the items inside the window with float comparisons only,
 * and a second pass, run only when needed, settles the items inside. */
static void rank_block(const rank_rows *w, int64_t nr, const int32_t *cand,
                       int64_t i0, int64_t nb, double en_max, const float *S)
{
    double ulp = (double)(w->C + 4) * ldexp(1.0, -23);
    double tiny = (double)(w->C + 4) * (double)FLT_MIN;
    for (int64_t r = 0; r < nr; r++) {
        double tol = ulp * w->qn[r] * en_max + tiny;
        float lo, hi;
        float_window(w->st[r] - tol, w->st[r] + tol, &lo, &hi);
        const float *s = S + r * nb;

        /* s > hi: certainly above the target; lo <= s <= hi: unsure */
        int64_t above = 0, not_below = 0;
        for (int64_t i = 0; i < nb; i++) {
            above += s[i] > hi;
            not_below += s[i] >= lo;
        }
        w->greater[r] += above;
        for (int64_t i = 0; not_below > above && i < nb; i++) {
            if (s[i] >= lo && !(s[i] > hi)) {
                rank_close(w, r, cand_id(cand, i0 + i));
            }
        }
    }
}

/* one block of rows against every candidate block */
static void rank_rowblock(rank_rows *w, int64_t nr, const int32_t *cand,
                          int64_t K, float *eb, float *S)
{
    int C = w->C;
    for (int64_t r = 0; r < nr; r++) {
        const float *et = w->emb + (int64_t)w->tgt[r] * C;
        w->st[r] = dot_exact(w->q + r * C, et, C);
        w->qn[r] = norm2(w->q + r * C, C);
        w->greater[r] = 0;
        w->ties[r] = 0;
    }
    for (int64_t i0 = 0; i0 < K; i0 += ITEM_BLOCK) {
        int64_t nb = K - i0 < ITEM_BLOCK ? K - i0 : ITEM_BLOCK;
        double en_max = 0.0;
        for (int64_t i = 0; i < nb; i++) {
            double en = norm2(w->emb + (int64_t)cand_id(cand, i0 + i) * C, C);
            en_max = en > en_max ? en : en_max;
        }
        score_block(w->q, nr, C, w->emb, cand, i0, nb, eb, S);
        rank_block(w, nr, cand, i0, nb, en_max, S);
    }
}

int nfcl_rank_targets(const float *q, int64_t N, int C, const float *emb,
                      int64_t V, const int32_t *cand, int64_t K,
                      const int32_t *targets, int64_t *greater,
                      int64_t *ties)
{
    int status = eval_check(q, N, C, emb, V, cand, K);
    for (int64_t n = 0; status == NFCL_OK && n < N; n++) {
        if (targets[n] < 1 || targets[n] >= V) {
            status = NFCL_E_RANGE;
        } else if (!all_finite(emb + (int64_t)targets[n] * C, C)) {
            status = NFCL_E_NONFINITE;
        }
    }
    if (status != NFCL_OK) {
        return status;
    }

    /* scratch: S (rb,ib) scores, eb (ib,C) gathered rows, st, qn (rb) */
    int64_t rb = N < ROW_BLOCK ? N : ROW_BLOCK;
    int64_t ib = K < ITEM_BLOCK ? K : ITEM_BLOCK;
    float *S = malloc((size_t)(rb * ib + ib * C) * sizeof(float));
    double *st = malloc((size_t)(2 * rb) * sizeof(double));
    if (S == NULL || st == NULL) {
        free(S);
        free(st);
        return NFCL_E_NOMEM;
    }
    for (int64_t r0 = 0; r0 < N; r0 += rb) {
        int64_t nr = N - r0 < rb ? N - r0 : rb;
        rank_rows w = {.q = q + r0 * C, .emb = emb, .tgt = targets + r0,
                       .C = C, .st = st, .qn = st + rb,
                       .greater = greater + r0, .ties = ties + r0};
        rank_rowblock(&w, nr, cand, K, S + rb * ib, S);
    }
    free(S);
    free(st);
    return NFCL_OK;
}

/* ---------------------------------------------------------------------- */
/* top-k: per row a min-heap of the k best so far, its root the worst. It
 * lives in the row's own slots of ids and scores, so needs no scratch. */

/* entry a ranks below entry b: lower score, or equal score and higher id */
static int worse(const float *hs, const int32_t *hi, int64_t a, int64_t b)
{
    return hs[a] < hs[b] || (hs[a] == hs[b] && hi[a] > hi[b]);
}

static void heap_swap(float *hs, int32_t *hi, int64_t a, int64_t b)
{
    float s = hs[a];
    int32_t i = hi[a];
    hs[a] = hs[b];
    hi[a] = hi[b];
    hs[b] = s;
    hi[b] = i;
}

static void sift_down(float *hs, int32_t *hi, int64_t size, int64_t p)
{
    for (;;) {
        int64_t l = 2 * p + 1, r = l + 1, w = p;
        if (l < size && worse(hs, hi, l, w)) {
            w = l;
        }
        if (r < size && worse(hs, hi, r, w)) {
            w = r;
        }
        if (w == p) {
            return;
        }
        heap_swap(hs, hi, p, w);
        p = w;
    }
}

static void sift_up(float *hs, int32_t *hi, int64_t p)
{
    while (p > 0 && worse(hs, hi, p, (p - 1) / 2)) {
        heap_swap(hs, hi, p, (p - 1) / 2);
        p = (p - 1) / 2;
    }
}

/* heap -> best first: the worst goes to the end, one at a time */
static void heap_sort(float *hs, int32_t *hi, int64_t size)
{
    for (int64_t end = size - 1; end > 0; end--) {
        heap_swap(hs, hi, 0, end);
        sift_down(hs, hi, end, 0);
    }
}

static int excluded(const int32_t *ex, int E, int32_t id)
{
    for (int e = 0; e < E; e++) {
        if (ex[e] == id) {
            return 1;
        }
    }
    return 0;
}

/* Offer the items of one block, S (nr,nb) for ids i0+1.., to the heaps of
 * rows r0.. . Items arrive in increasing id, so an item whose score only
 * equals the root's loses the tie and is skipped. The exclusion list is
 * scanned only for items that would enter, which is rare once a heap is
 * full. */
static void topk_block(const float *S, int64_t nr, int64_t nb, int64_t i0,
                       int k, const int32_t *exclude, int E, int32_t *ids,
                       float *scores, int64_t *size)
{
    for (int64_t r = 0; r < nr; r++) {
        float *hs = scores + r * k;
        int32_t *hi = ids + r * k;
        const int32_t *ex = exclude != NULL ? exclude + r * E : NULL;
        for (int64_t i = 0; i < nb; i++) {
            float s = S[r * nb + i];
            int32_t id = (int32_t)(i0 + i + 1);
            if ((size[r] == k && !(s > hs[0])) || (ex && excluded(ex, E, id))) {
                continue;
            }

            /* grow the heap, or replace its worst entry */
            if (size[r] < k) {
                hs[size[r]] = s;
                hi[size[r]] = id;
                sift_up(hs, hi, size[r]++);
            } else {
                hs[0] = s;
                hi[0] = id;
                sift_down(hs, hi, k, 0);
            }
        }
    }
}

/* every item block against one block of rows, then sort each heap */
static int topk_rowblock(const float *q, int64_t nr, int C, const float *emb,
                         int64_t V, int k, const int32_t *exclude, int E,
                         int32_t *ids, float *scores, int64_t *size, float *S)
{
    int64_t K = V - 1;
    memset(size, 0, (size_t)nr * sizeof(int64_t));
    for (int64_t i0 = 0; i0 < K; i0 += ITEM_BLOCK) {
        int64_t nb = K - i0 < ITEM_BLOCK ? K - i0 : ITEM_BLOCK;
        score_block(q, nr, C, emb, NULL, i0, nb, NULL, S);
        topk_block(S, nr, nb, i0, k, exclude, E, ids, scores, size);
    }
    for (int64_t r = 0; r < nr; r++) {
        if (size[r] < k) {
            return NFCL_E_ARG; /* exclusions left fewer than k items */
        }
        heap_sort(scores + r * k, ids + r * k, k);
    }
    return NFCL_OK;
}

int nfcl_topk(const float *q, int64_t N, int C, const float *emb, int64_t V,
              int k, const int32_t *exclude, int E, int32_t *ids,
              float *scores)
{
    int status = eval_check(q, N, C, emb, V, NULL, V - 1);
    if (status != NFCL_OK) {
        return status;
    }
    if (k < 1 || k > V - 1 || E < 0 || (exclude == NULL && E > 0)) {
        return NFCL_E_ARG;
    }
    for (int64_t x = 0; exclude != NULL && x < N * E; x++) {
        if (exclude[x] < 0 || exclude[x] >= V) {
            return NFCL_E_RANGE;
        }
    }

    /* scratch: S (rb,ib) scores, size (rb) heap fill per row */
    int64_t rb = N < ROW_BLOCK ? N : ROW_BLOCK;
    int64_t ib = V - 1 < ITEM_BLOCK ? V - 1 : ITEM_BLOCK;
    float *S = malloc((size_t)(rb * ib) * sizeof(float));
    int64_t *size = malloc((size_t)rb * sizeof(int64_t));
    if (S == NULL || size == NULL) {
        free(S);
        free(size);
        return NFCL_E_NOMEM;
    }
    for (int64_t r0 = 0; status == NFCL_OK && r0 < N; r0 += rb) {
        int64_t nr = N - r0 < rb ? N - r0 : rb;
        const int32_t *ex = exclude != NULL ? exclude + r0 * E : NULL;
        status = topk_rowblock(q + r0 * C, nr, C, emb, V, k, ex, E,
                               ids + r0 * k, scores + r0 * k, size, S);
    }
    free(S);
    free(size);
    return status;
}
