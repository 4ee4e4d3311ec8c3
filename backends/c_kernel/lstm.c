/* lstm.c: the C backend's LSTM training step, called from Python through cffi.
 *
 * The math is the NumPy reference's (backends/reference/reference.py); the way
 * it is computed is the Numba backend's (backends/numba_cpu/kernels.py):
 *
 *   - the batch is cut into shards by its shape alone (shard_plan), and the
 *     threads take them; each shard runs forward and backward through every
 *     layer on its own rows, in its own time-major buffers, and writes its
 *     gradient into its own private row; the rows are then summed in shard
 *     order, so any thread count gives the same bits;
 *   - x_t @ W_x for all T steps is one product before the recurrence, and the
 *     weight gradients are one product each after the backward sweep;
 *   - the pointwise gate math is one pass per step; the backward pass turns the
 *     stored gates into dz in place;
 *   - the optimizer (SGD with momentum, Adam or AdamW, as torch.optim defines
 *     them, weight decay included, after optional clipping of the global
 *     gradient norm) is fused into the same call; its per-step constants (Adam's
 *     bias corrections, the decay) come from the host in lstm_optim, computed
 *     once in lstmbench.optim;
 *   - dropout's masks are drawn from a counter-based hash where they are
 *     applied (lstm_body.h: drop_step), one step of one layer's output at a
 *     time, so no mask is stored or handed over.
 *
 * Matrix products are our own (lstm_body.h): a 6 x 2-vector register-blocked
 * micro-kernel with broadcast FMAs, written with GCC vector extensions so the
 * same source becomes AVX-512VL, AVX2+FMA or SSE2 code. Functions marked HOT
 * are compiled once per instruction set (target_clones) and the loader picks
 * the best one for the CPU; LSTMBENCH_C_NATIVE=1 at build time compiles
 * everything for -march=native instead.
 *
 * This file holds what does not depend on the dtype (size checks, the workspace
 * arena, the activation functions) and includes lstm_body.h twice: once with
 * real = float and once with real = double.
 *
 * No global mutable state: cffi releases the GIL during a call, and everything
 * a call touches comes in through its arguments.
 */
#include "lstm_api.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef LSTM_SOURCE_HASH
#define LSTM_SOURCE_HASH "unknown"  /* build_ffi.py passes the hash of the sources */
#endif
#ifndef LSTM_BUILD_FLAGS
#define LSTM_BUILD_FLAGS "unknown"
#endif

/* ---- compiler plumbing ------------------------------------------------------ */

/* The micro-kernel's vectors: 32 bytes (AVX2 ymm, in every clone) or 64 (AVX-512 zmm). The
 * package builds the kernel twice, _lstm_c with 32 and _lstm_c_avx512 with 64 (build_ffi.py),
 * and the backend loads the second on a CPU with AVX-512: on Zen 5, whose 512-bit FMAs are
 * full width, it makes a training step up to 1.8x faster (docs/c-backend.md). */
#ifndef LSTM_VECTOR_BYTES
#define LSTM_VECTOR_BYTES 32
#endif
#if LSTM_VECTOR_BYTES != 32 && LSTM_VECTOR_BYTES != 64
#error "LSTM_VECTOR_BYTES must be 32 or 64"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(LSTM_NATIVE)
/* One copy per x86-64 level; the dynamic loader picks one (GNU ifunc) at load time. The
 * 64-byte build is loaded only where AVX-512 is: its baseline copy exists for the loader. */
#define LSTM_CLONES 1
#if LSTM_VECTOR_BYTES == 64
#define HOT __attribute__((noinline, target_clones("arch=x86-64-v4", "default")))
#else
#define HOT __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#elif LSTM_VECTOR_BYTES == 64 && !defined(LSTM_NATIVE)
#error "64-byte vectors need target_clones (GCC on x86-64 Linux) or a -march=native build"
#else
#define LSTM_CLONES 0
#define HOT __attribute__((noinline))
#endif
#define INLINE static inline __attribute__((always_inline))

/* Under AddressSanitizer (the CI test builds asan_driver.c with it) every buffer
 * carved out of the workspace gets a poisoned red zone after it, so an overrun
 * from one buffer into the next is reported, not silently absorbed. */
#if defined(__SANITIZE_ADDRESS__)
#define LSTM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LSTM_ASAN 1
#endif
#endif
#ifdef LSTM_ASAN
#include <sanitizer/asan_interface.h>
#define LSTM_REDZONE 64
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (size_t)(n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (size_t)(n))
#else
#define LSTM_REDZONE 0
#define POISON(p, n) ((void)0)
#define UNPOISON(p, n) ((void)0)
#endif

#define ALIGN 64          /* every workspace buffer starts on a cache line */
#define MAX_DIM (1 << 24) /* sizes above this are refused (keeps every product in int64) */
#define MAX_BYTES 4e15    /* so is a workspace above 4 PB */
#define CHUNK 4096        /* parameters per chunk of the reduction / update passes */

INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
INLINE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
INLINE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---- build facts -------------------------------------------------------------- */

const char *lstm_source_hash(void) { return LSTM_SOURCE_HASH; }
const char *lstm_build_info(void) { return LSTM_BUILD_FLAGS; }

int lstm_vector_bytes(void) { return LSTM_VECTOR_BYTES; }

int lstm_cpu_has_avx512(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

int lstm_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

const char *lstm_isa(void)
{
#if defined(LSTM_NATIVE)
    return "native (built with -march=native)";
#elif LSTM_CLONES
    /* The same test the ifunc resolvers make for target_clones. */
    if (lstm_cpu_has_avx512()) return "x86-64-v4 clone (AVX-512)";
    if (LSTM_VECTOR_BYTES == 32 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2"))
        return "x86-64-v3 clone (AVX2, FMA)";
    return "default clone (baseline x86-64)";
#else
    return "baseline (no target_clones on this compiler/platform)";
#endif
}

const char *lstm_error_message(int code)
{
    switch (code) {
    case LSTM_OK: return "ok";
    case LSTM_EDIMS: return "a size is smaller than 1 or too large";
    case LSTM_ELAYOUT: return "the parameter offsets are not the canonical flat layout";
    case LSTM_EWORKSPACE: return "the workspace is smaller than lstm_workspace_bytes() says";
    case LSTM_ECLASS: return "a class id is outside [0, output_size)";
    case LSTM_EARG: return "a required pointer is NULL or an optimizer setting is invalid";
    case LSTM_ELENGTHS: return "a length is outside [1, steps] or a shard's lengths are not sorted longest first";
    default: return "unknown error";
    }
}

/* ---- sizes and the flat parameter layout ----------------------------------------- */

static int check_dims(const lstm_dims *d)
{
    if (!d) return LSTM_EARG;
    const int64_t v[] = {d->batch, d->steps, d->input_size, d->hidden_size, d->output_size, d->layers, d->threads};
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++)
        if (v[k] < 1 || v[k] > MAX_DIM) return LSTM_EDIMS;
    if (d->parallel < LSTM_PAR_AUTO || d->parallel > LSTM_PAR_UNITS || d->shard_rows < 0) return LSTM_EARG;
    if (d->xent && d->output_size < 2) return LSTM_EDIMS;
    return LSTM_OK;
}

/* How the work is cut (lstm_dims.parallel: LSTM_PAR_AUTO, _SHARDS or _UNITS), from the shape
 * alone and never from the thread count, so that 1, 2 or N threads give the same bits: each
 * piece's arithmetic is fixed, whichever thread runs it, and pieces meet in a fixed order.
 *   Batch shards of `rows` rows (the last possibly shorter), each run whole by one thread,
 *   their gradients and losses added in shard order: at least MIN_SHARDS of them (where there
 *   are that many rows), of at most SHARD_ROWS rows (fewer rows per step stream W_h once per
 *   fewer rows: 16-row shards cost 6-36% at H=128, B=128 on 2 threads, docs/determinism.md).
 *   dims.shard_rows > 0 sets the rows (for measurements).
 *   Or one shard of all B rows whose hidden units the threads share out ("team"), in whole
 *   panels of the micro-kernel, with a barrier per step: each unit's arithmetic is the same
 *   whichever thread owns it; each thread keeps its slice of W_h in its own cache.
 * Auto, as measured (tools/ablation_parallel.py, docs/c-backend.md): the team for one row
 * with at least two panels of hidden units, or for at most TEAM_BATCH rows and
 * H >= TEAM_MIN_HIDDEN (less work per step than that loses to the barrier). */
#define TEAM_BATCH 4
#define TEAM_MIN_HIDDEN 256
#define MIN_SHARDS 2
#define SHARD_ROWS 64
static void shard_plan(const lstm_dims *d, int64_t panel_width, int64_t *shards, int64_t *rows, int *team)
{
    const int64_t B = d->batch, H = d->hidden_size;
    const int64_t panels = ceil_div(H, panel_width); /* of hidden units, to share out */
    const int few_rows = (B == 1 && panels >= 2) || (B <= TEAM_BATCH && H >= TEAM_MIN_HIDDEN);
    *team = d->parallel == LSTM_PAR_UNITS || (d->parallel == LSTM_PAR_AUTO && few_rows);
    int64_t r = d->shard_rows > 0 ? d->shard_rows : min64(SHARD_ROWS, ceil_div(B, MIN_SHARDS));
    if (*team) r = B;
    *rows = min64(r, B);
    *shards = ceil_div(B, *rows);
}

/* Rows of a shard (its nb lengths, longest first, or NULL: every row takes every step) that
 * take step t: a prefix of the shard, so a step's products and gate math run on the first
 * rows only and shrink as rows finish. */
INLINE int64_t active_rows(const int64_t *len, int64_t nb, int64_t t)
{
    if (!len) return nb;
    while (nb > 0 && len[nb - 1] <= t) nb--;
    return nb;
}

/* lstmbench.layout.Layout: per layer W_x (D_l, 4H), W_h (H, 4H), b (4H); then the
 * head W_y (H, O), b_y (O). offs is (L+1, 3): offsets of W_x, W_h, b per layer and
 * of W_y, b_y in row L. We recompute it and refuse anything else. */
static int check_layout(const lstm_dims *d, const int64_t *offs, int64_t n_params)
{
    if (!offs) return LSTM_EARG;
    const int64_t H = d->hidden_size, G = 4 * H, L = d->layers;
    int64_t pos = 0;
    for (int64_t l = 0; l < L; l++) {
        const int64_t Dl = l == 0 ? d->input_size : H;
        if (offs[3 * l] != pos || offs[3 * l + 1] != pos + Dl * G || offs[3 * l + 2] != pos + (Dl + H) * G)
            return LSTM_ELAYOUT;
        pos += (Dl + H + 1) * G;
    }
    if (offs[3 * L] != pos || offs[3 * L + 1] != pos + H * d->output_size) return LSTM_ELAYOUT;
    pos += (H + 1) * d->output_size;
    return pos == n_params ? LSTM_OK : LSTM_ELAYOUT;
}

/* ---- the workspace arena ------------------------------------------------------------
 * Every buffer a call needs is carved from one caller-owned block, in the same
 * order for sizing (base == NULL) and for use, so nothing is allocated in C. */

typedef struct {
    char *base;
    int64_t used;
    int too_big;
} arena;

static void *take(arena *a, int64_t elem_size, int64_t n1, int64_t n2, int64_t n3, int64_t n4)
{
    if ((double)elem_size * (double)n1 * (double)n2 * (double)n3 * (double)n4 > MAX_BYTES) {
        a->too_big = 1;
        return NULL;
    }
    const int64_t bytes = elem_size * n1 * n2 * n3 * n4;
    const int64_t start = round_up(a->used, ALIGN);
    a->used = start + bytes + LSTM_REDZONE;
    if (!a->base || a->too_big) return NULL;
    UNPOISON(a->base + start, bytes);
    return a->base + start;
}

/* Aligns the caller's block; returns NULL if it cannot hold `need` bytes. */
static char *arena_base(void *ws, int64_t ws_bytes, int64_t need)
{
    if (!ws || ws_bytes < 0) return NULL;
    const uintptr_t p = (uintptr_t)ws, aligned = (p + ALIGN - 1) / ALIGN * ALIGN;
    if ((int64_t)(aligned - p) + need > ws_bytes) return NULL;
    POISON((char *)aligned, need);  /* take() unpoisons each buffer it hands out */
    return (char *)aligned;
}

/* ---- activations ---------------------------------------------------------------------
 * float32: exp and tanh as short polynomial forms that the compiler vectorises
 * (a call to libm's expf/tanhf per element would not vectorise), the same forms
 * as the Numba backend: exp within about 1.2 float32 ulps, tanh within about 4,
 * saturating tails included, so tiny gate derivatives f (1 - f) come out as
 * the reference's do. sigmoid(z) = 1 / (1 + exp(-z)) exactly as the reference
 * writes it. float64 keeps libm's exp and tanh, so float64 results agree with
 * the reference to rounding. */

/* exp(x) = 2^n exp(r), r = x - n ln 2 in [-ln2/2, ln2/2], Taylor series to r^7;
 * 2^n is built from its bits. */
INLINE float exp_f32(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    /* n = round(x log2 e) by adding 1.5 * 2^23: the sum's low mantissa bits hold n
     * (a float -> int rounding that vectorises) */
    const float shifted = x * 1.4426950408889634f + 12582912.0f;
    const float n = shifted - 12582912.0f;
    const float r = x - n * 0.693359375f - n * -2.12194440e-4f; /* ln 2 in two parts: n ln2_hi is exact */
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    const int32_t two_n_bits = (bits - 0x4B400000 + 127) * (1 << 23); /* exponent field of 2^n */
    float two_n;
    memcpy(&two_n, &two_n_bits, sizeof two_n);
    return p * two_n;
}

/* Near 0 a rational x P(x^2) / Q(x^2) (Eigen's coefficients; no cancellation there),
 * elsewhere 1 - 2 / (exp(2|x|) + 1). */
INLINE float tanh_f32(float x)
{
    const float a = fabsf(x), x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    const float near_zero = x * p / q;
    const float far = 1.0f - 2.0f / (exp_f32(2.0f * a) + 1.0f);
    return a < 0.625f ? near_zero : x >= 0 ? far : -far;
}

INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
INLINE double tanh_f64(double x) { return tanh(x); }
INLINE double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- dropout's hash (design.md 9) ------------------------------------------------------
 * MurmurHash3's 32-bit finaliser, on uint32 with wrapping (lstmbench.config.fmix32). The
 * kernel draws every mask from it where the mask is used, so no mask crosses the API. */
INLINE uint32_t fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

/* ---- the two dtypes ---------------------------------------------------------------- */

#define FN__(name, suffix) name##_##suffix
#define FN_(name, suffix) FN__(name, suffix)
#define FN(name) FN_(name, SUF)

#define real float
#define SUF f32
#define VL (LSTM_VECTOR_BYTES / 4) /* reals per vector */
#define ACT_TANH tanh_f32
#define ACT_SIGMOID sigmoid_f32
#define REAL_SQRT sqrtf
#include "lstm_body.h"
#undef real
#undef SUF
#undef VL
#undef ACT_TANH
#undef ACT_SIGMOID
#undef REAL_SQRT

#define real double
#define SUF f64
#define VL (LSTM_VECTOR_BYTES / 8)
#define ACT_TANH tanh_f64
#define ACT_SIGMOID sigmoid_f64
#define REAL_SQRT sqrt
#include "lstm_body.h"
#undef real
#undef SUF
#undef VL
#undef ACT_TANH
#undef ACT_SIGMOID
#undef REAL_SQRT

/* ---- dtype dispatch for sizes -------------------------------------------------------- */

int64_t lstm_panel_width(int64_t dtype_size)
{
    return dtype_size == 4 ? panel_width_f32() : dtype_size == 8 ? panel_width_f64() : -1;
}

int lstm_parallel_plan(const lstm_dims *d, int64_t dtype_size)
{
    if (check_dims(d) != LSTM_OK) return -1;
    return dtype_size == 4 ? parallel_plan_f32(d) : dtype_size == 8 ? parallel_plan_f64(d) : -1;
}

int64_t lstm_shard_rows(const lstm_dims *d, int64_t dtype_size)
{
    if (check_dims(d) != LSTM_OK || (dtype_size != 4 && dtype_size != 8)) return -1;
    int64_t shards, rows;
    int team;
    shard_plan(d, dtype_size == 4 ? panel_width_f32() : panel_width_f64(), &shards, &rows, &team);
    return rows;
}

int64_t lstm_workspace_bytes(const lstm_dims *d, int64_t dtype_size)
{
    if (check_dims(d) != LSTM_OK) return -1;
    return dtype_size == 4 ? workspace_bytes_f32(d) : dtype_size == 8 ? workspace_bytes_f64(d) : -1;
}

int64_t lstm_matmul_workspace_bytes(int64_t K, int64_t N, int64_t dtype_size)
{
    if (K < 1 || N < 1 || K > MAX_DIM || N > MAX_DIM) return -1;
    return dtype_size == 4 ? matmul_workspace_bytes_f32(K, N) : dtype_size == 8 ? matmul_workspace_bytes_f64(K, N) : -1;
}
