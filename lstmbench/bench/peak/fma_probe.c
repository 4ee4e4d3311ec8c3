/* fma_probe.c: the machine's floating-point ceiling, measured, for lstmbench bench.
 *
 * Each thread runs ACC independent chains acc = acc * a + b of vector FMAs: enough
 * independent chains to cover the FMA latency on every FMA pipe, nothing else in the
 * loop, nothing stored until the end. GFLOP/s = 2 * lanes * ACC * iterations * threads
 * / seconds. The widest instructions the CPU has are what "peak" means: 64-byte
 * vectors (AVX-512) where they exist; the 32-byte (AVX2 + FMA) probe is beside it.
 * Written with intrinsics in functions compiled for their instruction set, so the
 * width is exactly the one asked for, whatever the compiler would have chosen.
 */
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <time.h>

#define ACC 12 /* independent chains per thread: >= FMA latency (4) x FMA pipes (2), with room */

int64_t fma_widest_vector_bytes(void);
double fma_probe_gflops(int64_t vector_bytes, int64_t dtype_size, int64_t threads, int64_t iters);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The loop body for one vector type: ACC chains, then their sum (kept, so nothing is dead code). */
#define CHAINS(VEC, SET1, FMADD, ADD, STORE, SCALAR, LANES)                         \
    VEC a = SET1((SCALAR)0.9999999), b = SET1((SCALAR)1e-7), acc[ACC];            \
    for (int k = 0; k < ACC; k++) acc[k] = SET1((SCALAR)(1 + k));                 \
    for (int64_t i = 0; i < iters; i++) {                                          \
        _Pragma("GCC unroll 12") for (int k = 0; k < ACC; k++) acc[k] = FMADD(acc[k], a, b); \
    }                                                                              \
    VEC s = acc[0];                                                                \
    for (int k = 1; k < ACC; k++) s = ADD(s, acc[k]);                              \
    SCALAR out[LANES];                                                             \
    STORE(out, s);                                                                 \
    return (double)out[0];

__attribute__((target("avx512f"), noinline)) static double chains_512_f32(int64_t iters)
{
    CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, float, 16)
}
__attribute__((target("avx512f"), noinline)) static double chains_512_f64(int64_t iters)
{
    CHAINS(__m512d, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd, _mm512_storeu_pd, double, 8)
}
__attribute__((target("avx2,fma"), noinline)) static double chains_256_f32(int64_t iters)
{
    CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, float, 8)
}
__attribute__((target("avx2,fma"), noinline)) static double chains_256_f64(int64_t iters)
{
    CHAINS(__m256d, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_add_pd, _mm256_storeu_pd, double, 4)
}

int64_t fma_widest_vector_bytes(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 64;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 32;
    return 0;
}

static double run_chains(int64_t vector_bytes, int64_t dtype_size, int64_t iters)
{
    if (vector_bytes == 64) return dtype_size == 4 ? chains_512_f32(iters) : chains_512_f64(iters);
    return dtype_size == 4 ? chains_256_f32(iters) : chains_256_f64(iters);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GFLOP/s of `threads` threads each running `iters` iterations; -1 if the CPU lacks the
 * instructions or an argument is out of range. */
double fma_probe_gflops(int64_t vector_bytes, int64_t dtype_size, int64_t threads, int64_t iters)
{
    if ((vector_bytes != 64 && vector_bytes != 32) || (dtype_size != 4 && dtype_size != 8) || threads < 1 ||
        iters < 1 || vector_bytes > fma_widest_vector_bytes())
        return -1.0;
    volatile double sink = 0.0;
    const double start = now();
#ifdef _OPENMP
#pragma omp parallel num_threads((int)threads) reduction(+ : sink)
    sink += run_chains(vector_bytes, dtype_size, iters);
    const int64_t ran = threads;
#else
    sink += run_chains(vector_bytes, dtype_size, iters);
    const int64_t ran = 1;
#endif
    const double seconds = now() - start;
    (void)sink;
    const double lanes = (double)vector_bytes / (double)dtype_size;
    return 2.0 * lanes * ACC * (double)iters * (double)ran / seconds / 1e9;
}

#else /* not x86-64 with GCC/Clang: no probe */

int64_t fma_widest_vector_bytes(void) { return 0; }
double fma_probe_gflops(int64_t vector_bytes, int64_t dtype_size, int64_t threads, int64_t iters)
{
    (void)vector_bytes, (void)dtype_size, (void)threads, (void)iters;
    return -1.0;
}

#endif
