/*
 * adam.c - one Adam step with global-norm gradient clipping.
 *
 * Matches torch.optim.Adam (amsgrad off) after
 * torch.nn.utils.clip_grad_norm_ on the dense parameters. The item
 * embedding table at the front of params is updated lazily, like
 * torch.optim.SparseAdam: only rows listed in the rowset move, and rows a
 * batch did not touch keep their moments and are not decayed. The update
 * itself uses Adam's form (eps added to sqrt(v_hat)) on those rows too.
 */
#include <float.h>
#include <math.h>

#include "fastmath.h"
#include "nfcl.h"

/* added to the norm before dividing, as torch's clip_grad_norm_ does */
#define CLIP_EPS 1e-6

/* constants of one step, shared by the dense and the row updates */
typedef struct {
    double lr, beta1, beta2, eps, wd;
    double coef;    /* clipping factor applied to every gradient */
    double bc1;     /* 1 - beta1^t */
    double sqrt_bc2; /* sqrt(1 - beta2^t) */
} adam_consts;

/* Adam on n contiguous floats p, g, m, v (n), then g = 0. The L2 weight
 * decay is added to the clipped gradient, as in torch's Adam. */
static void adam_span(const adam_consts *a, float *p, float *g, float *m,
                      float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)g[i] * a->coef + a->wd * (double)p[i];

        /* moments, then the bias-corrected step */
        double mi = a->beta1 * (double)m[i] + (1.0 - a->beta1) * gi;
        double vi = a->beta2 * (double)v[i] + (1.0 - a->beta2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double denom = sqrt((double)v[i]) / a->sqrt_bc2 + a->eps;
        p[i] = (float)((double)p[i] - a->lr / a->bc1 * (double)m[i] / denom);
        g[i] = 0.0f;
    }
}

static double sum_squares(const float *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)x[i] * (double)x[i];
    }
    return s;
}

/* everything that must hold before any parameter moves */
static int adam_check(int64_t n, int64_t emb_rows, int C,
                      const nfcl_rowset *rs, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int64_t t)
{
    if (n < 1 || n > NFCL_MAX_ELEMS || emb_rows < 0 || C < 1 ||
        emb_rows > n / C) {
        return NFCL_E_SIZE;
    }
    if (t < 1 || !(lr >= 0.0f) || !isfinite(lr) || !(beta1 >= 0.0f) ||
        !(beta1 < 1.0f) || !(beta2 >= 0.0f) || !(beta2 < 1.0f) ||
        !(eps > 0.0f) || !isfinite(eps) || !(weight_decay >= 0.0f) ||
        !isfinite(weight_decay)) {
        return NFCL_E_ARG;
    }
    if (rs == NULL) {
        return NFCL_OK;
    }
    int64_t count = *rs->count;
    if (count < 0 || count > emb_rows) {
        return NFCL_E_RANGE;
    }
    for (int64_t i = 0; i < count; i++) {
        if (rs->rows[i] < 0 || rs->rows[i] >= emb_rows) {
            return NFCL_E_RANGE;
        }
    }
    return NFCL_OK;
}

int nfcl_adam_step(float *params, float *grads, float *m, float *v, int64_t n,
                   int64_t emb_rows, int C, nfcl_rowset *rs, float lr,
                   float beta1, float beta2, float eps, float weight_decay,
                   float clip, int64_t t, float *gnorm)
{
    int status = adam_check(n, emb_rows, C, rs, lr, beta1, beta2, eps,
                            weight_decay, t);
    if (status != NFCL_OK) {
        return status;
    }
    int64_t e0 = emb_rows * C; /* first dense float */
    int64_t count = rs == NULL ? 0 : *rs->count;

    /* global L2 norm: the dense part plus the listed embedding rows */
    double ss = sum_squares(grads + e0, n - e0);
    for (int64_t i = 0; i < count; i++) {
        ss += sum_squares(grads + (int64_t)rs->rows[i] * C, C);
    }
    double norm = sqrt(ss);
    *gnorm = (float)norm;
    if (!isfinite(norm) || norm > FLT_MAX) {
        /* nothing has been touched yet; a norm past float range would
         * poison the second moments with inf */
        return NFCL_E_NONFINITE;
    }

    /* clip_grad_norm_: scale by min(1, clip / (norm + 1e-6)) */
    adam_consts a = {.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps,
                     .wd = weight_decay, .coef = 1.0};
    if (clip > 0.0f) {
        double c = (double)clip / (norm + CLIP_EPS);
        a.coef = c < 1.0 ? c : 1.0;
    }
    a.bc1 = 1.0 - pow((double)beta1, (double)t);
    a.sqrt_bc2 = sqrt(1.0 - pow((double)beta2, (double)t));

    /* dense part in chunks, then only the touched rows, whose marks are
     * cleared; every element is updated on its own, so the threads' split
     * changes nothing */
    int64_t nd = n - e0, chunk = (int64_t)1 << 14;
    int64_t n_chunks = (nd + chunk - 1) / chunk;
#pragma omp parallel if (n_chunks > 4)
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < n_chunks; k++) {
            int64_t o = e0 + k * chunk;
            int64_t len = nd - k * chunk < chunk ? nd - k * chunk : chunk;
            adam_span(&a, params + o, grads + o, m + o, v + o, len);
        }
    }
#pragma omp parallel if (count * C >= ((int64_t)1 << 16))
    NFCL_FP_SCOPE {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < count; i++) {
            int64_t o = (int64_t)rs->rows[i] * C;
            adam_span(&a, params + o, grads + o, m + o, v + o, C);
            rs->mask[rs->rows[i]] = 0;
        }
    }
    if (rs != NULL) {
        *rs->count = 0;
    }
    return NFCL_OK;
}
