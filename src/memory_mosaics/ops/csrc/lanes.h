/* Dot products over rows of n values, shared by the package's C kernels.

   LANES independent partial sums, so that the compiler's vectoriser can run the loop in SIMD
   registers without reassociating floating-point additions (which it may not do without
   -ffast-math: a single running sum stays a scalar loop); the sums are in double, except in
   dot_float_single (float: twice the lanes per SIMD register, for reads bound by arithmetic). */

#ifndef MEMORY_MOSAICS_LANES_H
#define MEMORY_MOSAICS_LANES_H

#define LANES 8

#define DOT_OF(NAME, T, ACC)                                               \
    static inline ACC NAME(const T *a, const T *b, int n) {                \
        ACC part[LANES] = {0};                                             \
        int i = 0;                                                         \
        for (; i + LANES <= n; i += LANES)                                 \
            for (int j = 0; j < LANES; j++) part[j] += (ACC)a[i + j] * b[i + j]; \
        ACC s = 0;                                                         \
        for (; i < n; i++) s += (ACC)a[i] * b[i];                          \
        for (int j = 0; j < LANES; j++) s += part[j];                      \
        return s;                                                          \
    }

DOT_OF(dot_float, float, double)
DOT_OF(dot_double, double, double)
DOT_OF(dot_float_single, float, float)

#endif
