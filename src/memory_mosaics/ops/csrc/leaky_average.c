/* The leaky average (spec section 2.1) as its literal recurrence, CPU:

       y[b, h, t] = lam[b, h, t] * y[b, h, t - 1] + x[b, h, t] ,   y[b, h, -1] = state[b, h] (0 without)

   one pass over x, no intermediate, for float32 (leaky_scan_f32) or float64 (leaky_scan_f64)
   storage. With reverse != 0 time runs backwards (the backward pass):
   y[t] = lam[t] * y[t + 1] + x[t], y[T] = state. ops/leaky_kernel.py compiles this file and wraps
   it; tests compare it with ops/leaky_average.py's leaky_average_reference.

   Why: the chunked form spends its time on small matrix products and copies; this loop reads x
   once and writes y once, vectorised over the D coordinates of a row (the compiler's loop
   vectoriser: AVX-512 or AVX2 with -march=native).

   Layout: x and y are (B, H, T, D) with element strides (sb, sh, st) each and unit stride along D,
   so that the (B, T, H, D) layout of a projection split into heads is read and written in place;
   lam (B, H, T) double contiguous; state (B, H, D) contiguous or NULL. Each task is one batch
   element and a range of `hc` heads' worth of H (tasks r = first, first + stride, ... of B * ceil(H
   / hc)); inside it time is the outer loop and the heads the inner one, so that in the (B, T, H, D)
   layout every step reads one contiguous run of hc * D values.

   The backward's decay gradient needs <y_t, kbar_{t-1}>: with `kbar` (B, H, T, D) contiguous (the
   forward's output) not NULL, dot[b, h, t] = <y[b, h, t], kbar[b, h, t - 1]> is written too
   (kbar[b, h, -1] = kbar_state[b, h], 0 when kbar_state is NULL). */

#include <stddef.h>
#include <stdint.h>

#include "lanes.h"

/* The running average is kept in double for either storage type: a float32 loop drifts over
   thousands of steps of a decay close to 1. lam is double too (the caller exponentiates in double). */
#define LEAKY_SCAN(NAME, REAL, DOT)                                                                  \
    void NAME(const REAL *x, int64_t sxb, int64_t sxh, int64_t sxt, const double *lam,              \
              const REAL *state, REAL *y, int64_t syb, int64_t syh, int64_t syt, const REAL *kbar,   \
              const REAL *kbar_state, double *dot, int B, int H, int T, int D, int hc, int reverse,  \
              int first, int stride) {                                                              \
        const int chunks = (H + hc - 1) / hc;                                                       \
        double acc[hc * D];                                                                         \
        for (int r = first; r < B * chunks; r += stride) {                                          \
            const int b = r / chunks, h0 = (r % chunks) * hc, h1 = h0 + hc < H ? h0 + hc : H;       \
            for (int h = h0; h < h1; h++)                                                           \
                for (int d = 0; d < D; d++)                                                         \
                    acc[(h - h0) * D + d] = state ? (double)state[((size_t)b * H + h) * D + d] : 0.0; \
            for (int i = 0; i < T; i++) {                                                           \
                const int t = reverse ? T - 1 - i : i;                                              \
                for (int h = h0; h < h1; h++) {                                                     \
                    const size_t bh = (size_t)b * H + h;                                            \
                    const REAL *restrict xt = x + b * sxb + h * sxh + t * sxt;                      \
                    REAL *restrict yt = y + b * syb + h * syh + t * syt;                            \
                    double *restrict a = acc + (h - h0) * D;                                        \
                    const double l = lam[bh * T + t];                                               \
                    for (int d = 0; d < D; d++) {                                                   \
                        a[d] = l * a[d] + (double)xt[d];                                            \
                        yt[d] = (REAL)a[d];                                                         \
                    }                                                                               \
                    if (kbar) {                                                                     \
                        const REAL *prev = t ? kbar + (bh * T + t - 1) * D                          \
                                             : kbar_state ? kbar_state + bh * D : NULL;             \
                        dot[bh * T + t] = prev ? DOT(yt, prev, D) : 0.0;                            \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

LEAKY_SCAN(leaky_scan_f32, float, dot_float)
LEAKY_SCAN(leaky_scan_f64, double, dot_double)
