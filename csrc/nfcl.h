/*
 * nfcl.h - the C core's public interface.
 *
 * The core trains skip-aware sequential recommenders: encoder forward and
 * backward passes, the losses and the optimizer. It holds no Python header,
 * allocates no long-lived memory (every buffer below is owned by the caller,
 * in practice a NumPy array), never prints and never exits. Every entry point
 * returns an nfcl_status; nfcl_strerror() turns it into a fixed message.
 *
 * Shape notation, used in every comment of csrc/:
 *   B  sessions in a batch           T  positions per session (<= max_len)
 *   C  embedding width (dim)         NH attention heads, hs = C / NH
 *   F  feed-forward width            L  encoder layers
 *   V  catalogue rows, row 0 = padding (item ids are 1..V-1)
 *   N  rows of prediction vectors    K  candidate items scored per row
 * Matrices are row-major; a Linear weight is (out, in), as in PyTorch.
 */
#ifndef NFCL_H
#define NFCL_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------- */
/* status codes */

typedef enum {
    NFCL_OK = 0,
    NFCL_E_SIZE = 1,      /* a size is zero, negative or too large */
    NFCL_E_RANGE = 2,     /* an item id or index is outside its range */
    NFCL_E_NOMEM = 3,     /* a scratch allocation failed */
    NFCL_E_NONFINITE = 4, /* a NaN or infinity was produced or given */
    NFCL_E_ARG = 5,       /* an argument combination is invalid */
    NFCL_E_CANDIDATES = 6 /* too few items left to draw the candidates */
} nfcl_status;

const char *nfcl_strerror(int status);

/* largest count the core accepts for any single dimension product */
#define NFCL_MAX_ELEMS ((int64_t)1 << 40)

/* ---------------------------------------------------------------------- */
/* threads: the core splits large matrix products into row blocks chosen by
 * shape alone, so results are bitwise the same with any thread count.
 * nfcl_set_threads also pins OpenBLAS to one thread. */

void nfcl_set_threads(int n);
int nfcl_get_threads(void);


/* ---------------------------------------------------------------------- */
/* touched embedding rows: lets the optimizer visit only the rows a batch
 * used. mask (V) is 0/1, rows (V) lists the marked ids in first-touch order,
 * *count is how many are listed. Row 0 (padding) is never marked. */

typedef struct {
    uint8_t *mask;
    int32_t *rows;
    int64_t *count;
} nfcl_rowset;

void nfcl_rowset_mark(nfcl_rowset *rs, int32_t row);

/* NFCL_OK if every ids[i] (n of them) lies in [lo, hi), else NFCL_E_RANGE */
int nfcl_check_ids(const int32_t *ids, int64_t n, int64_t lo, int64_t hi);

/* ---------------------------------------------------------------------- */
/* counter-based random numbers: a pure function of (seed, stream, counter),
 * so results never depend on thread count or call order. */

uint64_t nfcl_hash3(uint64_t seed, uint64_t stream, uint64_t counter);
float nfcl_uniform(uint64_t seed, uint64_t stream, uint64_t counter); /* [0,1) */

/* truncated normal N(0, std^2) cut at +-2 std */
int nfcl_trunc_normal(float *x, int64_t n, float std, uint64_t seed,
                      uint64_t stream);

/* ---------------------------------------------------------------------- */
/* the Transformer encoder (SASRec when causal = 1, BERT4Rec when 0).
 * Post-LN layers, as PyTorch's TransformerEncoderLayer(norm_first=False):
 *   x0 = dropout(item_emb[items] + pos_emb[t])
 *   per layer: x = LN1(x + dropout(SelfAttn(x)))
 *              x = LN2(x + dropout(W2 dropout(ReLU(W1 x + b1)) + b2))
 *   q  = GELU(head_w x + head_b)          (erf GELU)
 * Padding (item 0) is masked as an attention key; padded rows still get a
 * q, which the losses ignore. */

typedef struct {
    int64_t n_items; /* V */
    int dim;         /* C */
    int heads;       /* NH */
    int layers;      /* L */
    int max_len;     /* T max */
    int ffn;         /* F */
    float dropout;   /* p: embedding sum + four sites per layer */
    int causal;      /* 1 = each position sees itself and the past */
} nfcl_tf_config;

/* parameter tensor k of the flat buffer: its name, shape and offset */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[2];
    int64_t offset;
} nfcl_tensor_info;

/* sizes: a negative value is a (negated) status for an invalid cfg;
 * nfcl_tf_check also caps layers at 32 (tensor names are static) */
int nfcl_tf_check(const nfcl_tf_config *cfg);
int nfcl_tf_num_tensors(const nfcl_tf_config *cfg);
int nfcl_tf_tensor(const nfcl_tf_config *cfg, int k, nfcl_tensor_info *out);
int64_t nfcl_tf_num_params(const nfcl_tf_config *cfg);
int64_t nfcl_tf_acts_size(const nfcl_tf_config *cfg, int B, int T);
int64_t nfcl_tf_scratch_size(const nfcl_tf_config *cfg, int B, int T);

/* item_emb rows ~ trunc normal(0.02), row 0 zero; pos_emb, 2-D weights
 * trunc normal(0.02); biases 0; LayerNorm weight 1, bias 0 */
int nfcl_tf_init(const nfcl_tf_config *cfg, float *params, uint64_t seed);

/* items (B,T) int32 in 0..V-1; q (B,T,C) out; acts (acts_size) out.
 * train = 0 turns dropout off. (seed, step) key the dropout masks. */
int nfcl_tf_forward(const nfcl_tf_config *cfg, const float *params,
                    float *acts, const int32_t *items, int B, int T,
                    uint64_t seed, uint64_t step, int train, float *q);

/* dq (B,T,C) in; grads (num_params) accumulated (+=); the item_emb rows
 * that receive gradient are marked in rs. scratch (scratch_size) is work
 * space. Must follow nfcl_tf_forward with the same arguments. */
int nfcl_tf_backward(const nfcl_tf_config *cfg, const float *params,
                     float *grads, const float *acts, float *scratch,
                     const int32_t *items, int B, int T, uint64_t seed,
                     uint64_t step, int train, const float *dq,
                     nfcl_rowset *rs);

/* ---------------------------------------------------------------------- */
/* GRU4Rec (Hidasi et al.): item embedding, stacked GRU layers with
 * PyTorch's nn.GRU gate layout (rows r, z, n of w_ih (3H,in), w_hh (3H,H),
 * b_ih, b_hh), inverted dropout on the embedding and between layers, and the
 * prediction head q = GELU(head_w h + head_b), head_w (C,H). The hidden
 * state starts at zero for every session and is read at every position;
 * padding positions (item 0, right padding) leave the state unchanged. */

typedef struct {
    int64_t n_items; /* V */
    int dim;         /* C, item embedding width */
    int hidden;      /* H */
    int layers;      /* L */
    int max_len;     /* T max */
    float dropout;
} nfcl_gru_config;

int nfcl_gru_check(const nfcl_gru_config *cfg);
int nfcl_gru_num_tensors(const nfcl_gru_config *cfg);
int nfcl_gru_tensor(const nfcl_gru_config *cfg, int k, nfcl_tensor_info *out);
int64_t nfcl_gru_num_params(const nfcl_gru_config *cfg);
int64_t nfcl_gru_acts_size(const nfcl_gru_config *cfg, int B, int T);
int64_t nfcl_gru_scratch_size(const nfcl_gru_config *cfg, int B, int T);
int nfcl_gru_init(const nfcl_gru_config *cfg, float *params, uint64_t seed);
int nfcl_gru_forward(const nfcl_gru_config *cfg, const float *params, float *acts,
                     const int32_t *items, int B, int T, uint64_t seed,
                     uint64_t step, int train, float *q);
int nfcl_gru_backward(const nfcl_gru_config *cfg, const float *params,
                      float *grads, const float *acts, float *scratch,
                      const int32_t *items, int B, int T, uint64_t seed,
                      uint64_t step, int train, const float *dq,
                      nfcl_rowset *rs);

/* ---------------------------------------------------------------------- */
/* Caser (Tang & Wang 2018), one prediction per position: the window of the
 * W items ending at t (left-padded with zero vectors) is an image (W,C);
 * horizontal filters of every height h = 1..W (n_h each) slide over it,
 * ReLU, max-pooled over time; n_v vertical filters (W,1) weight its rows;
 * both concatenated, dropout, fc (C, n_v*C + n_h*W) with ReLU, then the
 * prediction head q = GELU(head_w z + head_b). */

typedef struct {
    int64_t n_items; /* V */
    int dim;         /* C */
    int window;      /* W (the Caser paper's L) */
    int n_h;         /* horizontal filters per height */
    int n_v;         /* vertical filters */
    int max_len;     /* T max */
    float dropout;
} nfcl_caser_config;

int nfcl_caser_check(const nfcl_caser_config *cfg);
int nfcl_caser_num_tensors(const nfcl_caser_config *cfg);
int nfcl_caser_tensor(const nfcl_caser_config *cfg, int k, nfcl_tensor_info *out);
int64_t nfcl_caser_num_params(const nfcl_caser_config *cfg);
int64_t nfcl_caser_acts_size(const nfcl_caser_config *cfg, int B, int T);
int64_t nfcl_caser_scratch_size(const nfcl_caser_config *cfg, int B, int T);
int nfcl_caser_init(const nfcl_caser_config *cfg, float *params, uint64_t seed);
int nfcl_caser_forward(const nfcl_caser_config *cfg, const float *params,
                       float *acts, const int32_t *items, int B, int T,
                       uint64_t seed, uint64_t step, int train, float *q);
int nfcl_caser_backward(const nfcl_caser_config *cfg, const float *params,
                        float *grads, const float *acts, float *scratch,
                        const int32_t *items, int B, int T, uint64_t seed,
                        uint64_t step, int train, const float *dq,
                        nfcl_rowset *rs);

/* ---------------------------------------------------------------------- */
/* losses. Each computes its value and adds scale * d(loss) into dq and
 * demb (+=), marking demb rows in rs. */

/* Candidates for a sampled softmax: the unique non-zero targets (in order
 * of first appearance) followed by n_neg ids drawn uniformly without
 * replacement from 1..V-1 minus those targets, keyed by (seed, stream).
 * cand has room for N + n_neg ids; *K gets the count. tgt_idx (N) gets each
 * target's index in cand, -1 for padding targets. seen (V) is zeroed scratch
 * and is left zeroed. */
int nfcl_sample_candidates(const int32_t *targets, int64_t N, int64_t V,
                           int64_t n_neg, uint64_t seed, uint64_t stream,
                           uint8_t *seen, int32_t *cand, int64_t *K,
                           int32_t *tgt_idx);

/* Softmax cross-entropy of q (N,C) against candidates: logits[n,k] =
 * q[n] . emb[cand[k]]; cand == NULL means every item 1..V-1 (k = id - 1).
 * tgt_idx (N) indexes the target in the candidates, -1 = ignore the row.
 * Loss is the mean over non-ignored rows (0 if there are none). */
int nfcl_softmax_xent(const float *q, int64_t N, int C, const float *emb,
                      int64_t V, const int32_t *cand, int64_t K,
                      const int32_t *tgt_idx, float scale, float *loss,
                      float *dq, float *demb, nfcl_rowset *rs);

/* Skip-aware InfoNCE. items, skips (B,T+1): the session's positions 0..T,
 * item 0 = padding, skip 1 = skipped; q (B,T,C) are the predictions at
 * positions 0..T-1. variant 0 (default): anchors are non-skipped positions
 * t < T with a later non-skipped position; positive = the first of those;
 * negatives = every skipped position 0..T of the same session; cosine / tau;
 * mean over anchors with >= 1 negative. variant 1 (the published code):
 * negatives from session (b*T+t) mod B, taken over slots 0..T-1, non-skipped
 * slots kept as zero vectors, mean over all B*T rows. pos (B,T), optional:
 * the caller's own anchors, pos[b,t] = position 0..T of row (b,t)'s positive
 * or -1 for no anchor (BERT4Rec's masked positions); NULL = the rule above.
 * *n_anchors gets the number of rows that entered the mean. */
int nfcl_infonce(const float *q, int B, int T, int C, const float *emb,
                 int64_t V, const int32_t *items, const uint8_t *skips,
                 const int32_t *pos, float tau, int variant, float scale,
                 float *loss, int64_t *n_anchors, float *dq, float *demb,
                 nfcl_rowset *rs);

/* ---------------------------------------------------------------------- */
/* Adam with global-norm clipping. The first emb_rows*C floats of params are
 * the item embedding table and are updated only on the rows listed in rs
 * (lazy, like torch.optim.SparseAdam: untouched rows keep their moments);
 * the remaining n - emb_rows*C floats are updated densely. The gradient is
 * zeroed afterwards (dense part and listed rows) and rs is cleared.
 * *gnorm gets the norm before clipping (clip <= 0 disables clipping). */
int nfcl_adam_step(float *params, float *grads, float *m, float *v, int64_t n,
                   int64_t emb_rows, int C, nfcl_rowset *rs, float lr,
                   float beta1, float beta2, float eps, float weight_decay,
                   float clip, int64_t t, float *gnorm);

/* ---------------------------------------------------------------------- */
/* evaluation: score rows of q (N,C) against candidates (cand == NULL: all
 * items 1..V-1) and count, for each row, candidates scoring strictly above
 * its target (greater) and equal to it, the target excluded (ties). The
 * target need not be a candidate. Items are visited in blocks, so memory is
 * O(N x block). */
int nfcl_rank_targets(const float *q, int64_t N, int C, const float *emb,
                      int64_t V, const int32_t *cand, int64_t K,
                      const int32_t *targets, int64_t *greater,
                      int64_t *ties);

/* top-k items 1..V-1 per row of q (N,C), best first; ties to the lower id.
 * exclude (N, E) int32 ids to leave out per row (0 entries ignored), may be
 * NULL. ids (N,k), scores (N,k) out. */
int nfcl_topk(const float *q, int64_t N, int C, const float *emb, int64_t V,
              int k, const int32_t *exclude, int E, int32_t *ids,
              float *scores);

#endif /* NFCL_H */
