/* Strictly causal kernel-regression retrieval for small head sizes, float32, CPU.

   y_t = sum_{s in S(t)} softmax_s(q_t . k_s) v_s ,   S(t) = { s : min_lag <= t - s <= max_lag }

   (max_lag < 0: no upper bound; rows with S(t) empty output 0). The same function as
   ops/retrieval.py's causal_retrieval_reference: ops/small_head.py compiles this file and wraps it
   in an autograd Function, and tests/test_ops.py compares the two (values and gradients).

   Why: at head sizes 2-6 (the three-moons memory) general attention kernels spend their time on
   per-element overhead, not arithmetic. Here one task is a block of L = 16 queries (forward, dq)
   or of L = 16 pairs (dk, dv) of one (batch, head) row n; its inner loop runs over the other time
   axis with one 16-lane vector per coordinate (GCC/Clang vector extensions: AVX-512 registers where
   the CPU has them, split into narrower ones elsewhere), so no step needs a horizontal reduction.
   The exponential is a vector polynomial. Softmax uses two passes (row maximum, then weights).

   Layout: "planar" rows of Tp (T rounded up to a multiple of L, zero padded) values per
   coordinate: q, k (N, D, Tp); v (N, Dv, Tp); out, dq, dk, dv likewise; lse, delta (N, Tp).
   Tasks are numbered n * (Tp / L) + block; a call runs tasks first, first + stride, ... so that
   `stride` threads calling with first = 0 .. stride-1 share the work evenly (the caller's threads:
   no OpenMP runtime beside torch's). */

#include <string.h>

#define L 16
#define MAXD 8

typedef float vf __attribute__((vector_size(4 * L)));
typedef int vi __attribute__((vector_size(4 * L)));

static inline vf load(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }
static inline void store(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf splat(float a) { return a - (vf){}; }
static inline vi splat_i(int a) { return a - (vi){}; }
static inline vf select(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* exp(min(x, 0)) (0 below -87), relative error < 3e-7: x = (i + f) ln 2, f in (-0.5, 0.5],
   2^f by its Taylor polynomial of degree 7, 2^i written into the exponent bits. The clamp keeps
   the float -> int conversion in range for lanes that a caller masks out afterwards. */
static inline vf exp_nonpos(vf x) {
    x = select(x > 0.0f, splat(0.0f), x);
    vi tiny = x < splat(-87.0f);
    x = select(tiny, splat(-87.0f), x);
    vf y = x * 1.44269504088896341f;
    vi i = __builtin_convertvector(y - 0.5f, vi); /* truncation toward 0 of values <= 0 */
    vf r = (y - __builtin_convertvector(i, vf)) * 0.693147180559945309f;
    vf p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    vf e = p * (vf)((i + 127) << 23);
    return select(tiny, splat(0.0f), e);
}

static inline vf logv(vf x) { /* only at the end of a row block: scalar libm is fine */
    extern float logf(float);
    float a[L];
    store(a, x);
    for (int l = 0; l < L; l++) a[l] = a[l] > 0.0f ? logf(a[l]) : 0.0f;
    return load(a);
}

/* Query block t0 .. t0+L-1: the lanes' allowed pair ranges [lo, hi] and the union [*smin, *smax]. */
static inline void query_ranges(int t0, int T, int min_lag, int max_lag, vi *lo, vi *hi, int *smin, int *smax) {
    int a[L], b[L];
    *smin = T, *smax = -1;
    for (int l = 0; l < L; l++) {
        int t = t0 + l;
        b[l] = t < T ? t - min_lag : -1;
        a[l] = max_lag < 0 || t - max_lag < 0 ? 0 : t - max_lag;
        if (b[l] >= a[l]) {
            *smin = a[l] < *smin ? a[l] : *smin;
            *smax = b[l] > *smax ? b[l] : *smax;
        }
    }
    memcpy(lo, a, sizeof a);
    memcpy(hi, b, sizeof b);
}

void retrieval_forward(const float *q, const float *k, const float *v, float *out, float *lse,
                       int N, int T, int Tp, int D, int Dv, int min_lag, int max_lag, int first, int stride) {
    int blocks = Tp / L;
    for (long task = first; task < (long)N * blocks; task += stride) {
        int n = (int)(task / blocks), t0 = (int)(task % blocks) * L, smin, smax;
        const float *qn = q + (long)n * D * Tp, *kn = k + (long)n * D * Tp, *vn = v + (long)n * Dv * Tp;
        vf qv[MAXD], acc[MAXD], m = splat(-3.0e38f), sum = splat(0.0f);
        vi lo, hi;
        query_ranges(t0, T, min_lag, max_lag, &lo, &hi, &smin, &smax);
        for (int d = 0; d < D; d++) qv[d] = load(qn + (long)d * Tp + t0);
        for (int d = 0; d < Dv; d++) acc[d] = splat(0.0f);
        for (int s = smin; s <= smax; s++) { /* pass 1: row maxima */
            vf sc = qv[0] * kn[s];
            for (int d = 1; d < D; d++) sc += qv[d] * kn[(long)d * Tp + s];
            m = select((splat_i(s) >= lo) & (splat_i(s) <= hi) & (sc > m), sc, m);
        }
        for (int s = smin; s <= smax; s++) { /* pass 2: weights and weighted values */
            vf sc = qv[0] * kn[s];
            for (int d = 1; d < D; d++) sc += qv[d] * kn[(long)d * Tp + s];
            vf p = select((splat_i(s) >= lo) & (splat_i(s) <= hi), exp_nonpos(sc - m), splat(0.0f));
            sum += p;
            for (int d = 0; d < Dv; d++) acc[d] += p * vn[(long)d * Tp + s];
        }
        vi has = sum > 0.0f;
        vf inv = select(has, 1.0f / select(has, sum, splat(1.0f)), splat(0.0f));
        for (int d = 0; d < Dv; d++) store(out + ((long)n * Dv + d) * Tp + t0, acc[d] * inv);
        store(lse + (long)n * Tp + t0, select(has, m + logv(sum), splat(0.0f)));
    }
}

/* dscore_ts = p_ts (dout_t . v_s - delta_t), p_ts = exp(q_t . k_s - lse_t), delta_t = dout_t . out_t.
   dq_t = sum_s dscore_ts k_s (query blocks). */
void retrieval_backward_q(const float *q, const float *k, const float *v, const float *dout,
                          const float *lse, const float *delta, float *dq,
                          int N, int T, int Tp, int D, int Dv, int min_lag, int max_lag, int first, int stride) {
    int blocks = Tp / L;
    for (long task = first; task < (long)N * blocks; task += stride) {
        int n = (int)(task / blocks), t0 = (int)(task % blocks) * L, smin, smax;
        const float *qn = q + (long)n * D * Tp, *kn = k + (long)n * D * Tp, *vn = v + (long)n * Dv * Tp;
        const float *gn = dout + (long)n * Dv * Tp;
        vf qv[MAXD], gv[MAXD], acc[MAXD];
        vf ls = load(lse + (long)n * Tp + t0), dl = load(delta + (long)n * Tp + t0);
        vi lo, hi;
        query_ranges(t0, T, min_lag, max_lag, &lo, &hi, &smin, &smax);
        for (int d = 0; d < D; d++) qv[d] = load(qn + (long)d * Tp + t0), acc[d] = splat(0.0f);
        for (int d = 0; d < Dv; d++) gv[d] = load(gn + (long)d * Tp + t0);
        for (int s = smin; s <= smax; s++) {
            vf sc = qv[0] * kn[s], dp = gv[0] * vn[s];
            for (int d = 1; d < D; d++) sc += qv[d] * kn[(long)d * Tp + s];
            for (int d = 1; d < Dv; d++) dp += gv[d] * vn[(long)d * Tp + s];
            vf p = select((splat_i(s) >= lo) & (splat_i(s) <= hi), exp_nonpos(sc - ls), splat(0.0f));
            vf ds = p * (dp - dl);
            for (int d = 0; d < D; d++) acc[d] += ds * kn[(long)d * Tp + s];
        }
        for (int d = 0; d < D; d++) store(dq + ((long)n * D + d) * Tp + t0, acc[d]);
    }
}

/* dk_s = sum_t dscore_ts q_t, dv_s = sum_t p_ts dout_t (pair blocks s0 .. s0+L-1). */
void retrieval_backward_kv(const float *q, const float *k, const float *v, const float *dout,
                           const float *lse, const float *delta, float *dk, float *dv,
                           int N, int T, int Tp, int D, int Dv, int min_lag, int max_lag, int first, int stride) {
    int blocks = Tp / L;
    for (long task = first; task < (long)N * blocks; task += stride) {
        int n = (int)(task / blocks), s0 = (int)(task % blocks) * L;
        const float *qn = q + (long)n * D * Tp, *kn = k + (long)n * D * Tp, *vn = v + (long)n * Dv * Tp;
        const float *gn = dout + (long)n * Dv * Tp, *ln = lse + (long)n * Tp, *dn = delta + (long)n * Tp;
        vf kv[MAXD], vv[MAXD], gk[MAXD], gvv[MAXD];
        int a[L], b[L], tmin = T, tmax = -1; /* query t may read pair s iff a <= t <= b */
        for (int l = 0; l < L; l++) {
            int s = s0 + l;
            a[l] = s < T ? s + min_lag : T;
            b[l] = s >= T ? -1 : (max_lag < 0 || s + max_lag > T - 1 ? T - 1 : s + max_lag);
            if (b[l] >= a[l]) {
                tmin = a[l] < tmin ? a[l] : tmin;
                tmax = b[l] > tmax ? b[l] : tmax;
            }
        }
        vi tlo, thi;
        memcpy(&tlo, a, sizeof a);
        memcpy(&thi, b, sizeof b);
        for (int d = 0; d < D; d++) kv[d] = load(kn + (long)d * Tp + s0), gk[d] = splat(0.0f);
        for (int d = 0; d < Dv; d++) vv[d] = load(vn + (long)d * Tp + s0), gvv[d] = splat(0.0f);
        for (int t = tmin; t <= tmax; t++) {
            vf sc = kv[0] * qn[t], dp = vv[0] * gn[t];
            for (int d = 1; d < D; d++) sc += kv[d] * qn[(long)d * Tp + t];
            for (int d = 1; d < Dv; d++) dp += vv[d] * gn[(long)d * Tp + t];
            vf p = select((splat_i(t) >= tlo) & (splat_i(t) <= thi), exp_nonpos(sc - ln[t]), splat(0.0f));
            vf ds = p * (dp - dn[t]);
            for (int d = 0; d < D; d++) gk[d] += ds * qn[(long)d * Tp + t];
            for (int d = 0; d < Dv; d++) gvv[d] += p * gn[(long)d * Tp + t];
        }
        for (int d = 0; d < D; d++) store(dk + ((long)n * D + d) * Tp + s0, gk[d]);
        for (int d = 0; d < Dv; d++) store(dv + ((long)n * Dv + d) * Tp + s0, gvv[d]);
    }
}
