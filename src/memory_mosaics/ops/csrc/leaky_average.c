/* The leaky average (spec section 2.1) as its literal recurrence, CPU:

       y[r, t] = lam[r, t] * y[r, t - 1] + x[r, t] ,   y[r, -1] = state[r] (0 without a state)

   one pass over x, no intermediate, for float32 (leaky_scan_f32) or float64 (leaky_scan_f64)
   storage. With reverse != 0 time runs backwards (the backward pass):
   y[r, t] = lam[r, t] * y[r, t + 1] + x[r, t], y[r, T] = state[r]. ops/leaky_kernel.py compiles this
   file and wraps it; tests compare it with ops/leaky_average.py's leaky_average_reference.

   Why: the chunked form spends its time on small matrix products and copies; this loop reads x
   once and writes y once, vectorised over the D coordinates of a row (the compiler's loop
   vectoriser: AVX-512 or AVX2 with -march=native).

   Layout: x, y (R, T, D) contiguous; lam (R, T) double; state (R, D) or NULL; rows r = first, first +
   stride, ... so that `stride` threads calling with first = 0 .. stride-1 share the rows. */

#include <stddef.h>

/* The running average is kept in double for either storage type: a float32 loop drifts over
   thousands of steps of a decay close to 1. lam is double too (the caller exponentiates in double). */
#define LEAKY_SCAN(NAME, REAL)                                                                      \
    void NAME(const REAL *x, const double *lam, const REAL *state, REAL *y, int R, int T, int D,     \
              int reverse, int first, int stride) {                                                 \
        double acc[D];                                                                              \
        for (int r = first; r < R; r += stride) {                                                   \
            const REAL *xr = x + (size_t)r * T * D;                                                 \
            const double *lr = lam + (size_t)r * T;                                                 \
            REAL *yr = y + (size_t)r * T * D;                                                       \
            for (int d = 0; d < D; d++) acc[d] = state ? (double)state[(size_t)r * D + d] : 0.0;     \
            for (int i = 0; i < T; i++) {                                                           \
                const int t = reverse ? T - 1 - i : i;                                              \
                const REAL *restrict xt = xr + (size_t)t * D;                                       \
                REAL *restrict yt = yr + (size_t)t * D;                                             \
                const double l = lr[t];                                                             \
                for (int d = 0; d < D; d++) {                                                       \
                    acc[d] = l * acc[d] + (double)xt[d];                                            \
                    yt[d] = (REAL)acc[d];                                                           \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

LEAKY_SCAN(leaky_scan_f32, float)
LEAKY_SCAN(leaky_scan_f64, double)
