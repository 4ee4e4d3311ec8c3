/* asan_driver.c: runs the C kernel on small cases under AddressSanitizer and UBSan.
 *
 * tests/test_c_backend.py builds it as
 *     gcc -std=c11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
 *         -fno-omit-frame-pointer -fopenmp asan_driver.c -lm
 * and fails on any sanitizer report or a nonzero exit. It includes lstm.c
 * itself, so the kernel is compiled with the sanitizers too; under ASan the
 * kernel puts poisoned red zones between the buffers it carves out of the
 * workspace, so an overrun from one buffer into the next is caught as well.
 * Every array is its own malloc of exactly the size the API documents.
 *
 * Covered: forward, loss and gradients, fused training steps (Adam with
 * clipping, Adam with L2 weight decay, AdamW, SGD with and without momentum and
 * with L2), the update alone (also checked against its formula), for float32 and float64, 1..3
 * layers, both losses, both task shapes, batch sizes that leave padding rows in
 * the last shard, sizes that are not multiples of the vector width, 1..3
 * threads, the threads on batch shards and on one shard's hidden units, one-hot input
 * read as symbol ids; each case again with lengths (longest first: T, between, 1) and an
 * initial and final state; each again with dropout (masks drawn in the kernel: p = 0.4 with
 * the finite-difference check through the masks, and p = 0 through the dropout path, which
 * must give the bits of no dropout); the error returns (small workspace, wrong layout, bad class
 * id, lengths out of range or out of order, dropout on a workspace sized without it, a
 * weight decay that is not finite);
 * the matrix product in both of its B modes; and a finite-difference check of
 * the float64 gradient, so the driver also fails on wrong numbers.
 */
#include "lstm.c"

#include <stdio.h>
#include <stdlib.h>

static int failures = 0;

#define EXPECT(cond, ...)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                          \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) /* in [-1, 1) */
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* The canonical flat layout (lstmbench.layout.Layout). */
static int64_t layout(const lstm_dims *d, int64_t *offs)
{
    const int64_t H = d->hidden_size, G = 4 * H;
    int64_t pos = 0;
    for (int64_t l = 0; l < d->layers; l++) {
        const int64_t Dl = l == 0 ? d->input_size : H;
        offs[3 * l] = pos, offs[3 * l + 1] = pos + Dl * G, offs[3 * l + 2] = pos + (Dl + H) * G;
        pos += (Dl + H + 1) * G;
    }
    offs[3 * d->layers] = pos, offs[3 * d->layers + 1] = pos + H * d->output_size, offs[3 * d->layers + 2] = 0;
    return pos + (H + 1) * d->output_size;
}

/* The constants of step `step` as the host computes them (lstmbench.optim.step_scalars). */
static lstm_optim adam_step(int64_t step, double clip_norm)
{
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999;
    return (lstm_optim){.adam = 1, .first_step = step == 1, .lr = lr, .beta1 = b1, .beta2 = b2,
                        .one_minus_beta1 = 1.0 - b1, .one_minus_beta2 = 1.0 - b2,
                        .step_size = lr / (1.0 - pow(b1, (double)step)), .bias2_sqrt = sqrt(1.0 - pow(b2, (double)step)),
                        .eps = 1e-8, .clip_norm = clip_norm, .decay_factor = 1.0};
}

/* AdamW with weight decay w: Adam, and theta *= 1 - lr w first */
static lstm_optim adamw_step(int64_t step, double clip_norm, double w)
{
    lstm_optim opt = adam_step(step, clip_norm);
    opt.decay_factor = 1.0 - opt.lr * w;
    return opt;
}

static lstm_optim sgd_step(int64_t step, double momentum)
{
    return (lstm_optim){.first_step = step == 1, .lr = 1e-2, .momentum = momentum, .eps = 1e-8, .decay_factor = 1.0};
}

/* Dropout p = 0.4 (threshold floor(0.4 * 2^32), scale 1 / 0.6 in the dtype) on dims with keys and
 * rows (any values: a kernel row's global index need not be its place in the batch). */
static void set_dropout(lstm_dims *d, const uint32_t *keys, const uint32_t *rows, double scale)
{
    d->dropout = 1, d->drop_keys = keys, d->drop_rows = rows;
    d->drop_threshold = 1717986918u, d->drop_scale = scale;
}

/* Dropout's own checks on dims d that have it (p = 0.4; `loss` is theirs): the same call with
 * p = 0 through the dropout path (threshold 0, scale 1) gives the bits of a call without
 * dropout; p = 0.4 changes the loss; dropout on a workspace sized without it is refused. */
#define DEFINE_DROPOUT_CHECK(real, SUF)                                                                             \
    static void check_dropout_##SUF(const lstm_dims *d, const int64_t *offs, int64_t P, const real *theta,          \
                                    const real *x, const real *yr, const int64_t *yc, double loss, void *ws,        \
                                    int64_t ws_bytes)                                                               \
    {                                                                                                               \
        real *g_plain = xmalloc(sizeof(real) * (size_t)P), *g_zero = xmalloc(sizeof(real) * (size_t)P);             \
        double l_plain = -1, l_zero = -2;                                                                           \
        lstm_dims nd = *d;                                                                                          \
        nd.drop_keys = NULL, nd.drop_rows = NULL; /* (the workspace keeps its room for dropout) */                  \
        int rc = lstm_loss_grad_##SUF(&nd, offs, P, theta, x, yr, yc, g_plain, &l_plain, ws, ws_bytes);             \
        EXPECT(rc == 0, "loss_grad without dropout: %s", lstm_error_message(rc));                                  \
        nd = *d;                                                                                                    \
        nd.drop_threshold = 0, nd.drop_scale = 1.0; /* p = 0: keeps everything, times 1 */                          \
        rc = lstm_loss_grad_##SUF(&nd, offs, P, theta, x, yr, yc, g_zero, &l_zero, ws, ws_bytes);                   \
        EXPECT(rc == 0 && l_zero == l_plain && memcmp(g_zero, g_plain, sizeof(real) * (size_t)P) == 0,              \
               "dropout with p = 0 is not the same as none: loss %.17g vs %.17g", l_zero, l_plain);                \
        EXPECT(loss != l_plain, "dropout with p = 0.4 left the loss as it was (%.17g)", loss);                      \
        nd = *d;                                                                                                    \
        nd.dropout = 0; /* a workspace sized without room for the masked outputs */                                 \
        rc = lstm_loss_grad_##SUF(&nd, offs, P, theta, x, yr, yc, g_zero, &l_zero, ws, ws_bytes);                   \
        EXPECT(rc == LSTM_EARG, "dropout on a workspace without room for it accepted (%d)", rc);                    \
        free(g_plain), free(g_zero);                                                                                \
    }

/* The update alone against its formula (lstmbench.optim.optimizer_step), from zero moments, on
 * two chunks of parameters: Adam with L2, AdamW, SGD with momentum and L2 (first steps). */
#define DEFINE_UPDATE_CHECK(real, SUF)                                                                              \
    static void check_update_##SUF(void)                                                                            \
    {                                                                                                               \
        const int64_t P = 5000;                                                                                     \
        real *theta = xmalloc(sizeof(real) * P), *grad = xmalloc(sizeof(real) * P), *t0 = xmalloc(sizeof(real) * P); \
        real *m = xmalloc(sizeof(real) * P), *v = xmalloc(sizeof(real) * P);                                        \
        for (int64_t j = 0; j < P; j++) t0[j] = (real)uniform(), grad[j] = (real)uniform();                         \
        const double tol = sizeof(real) == 4 ? 1e-5 : 1e-12;                                                        \
        for (int kind = 0; kind < 3; kind++) {                                                                      \
            lstm_optim opt = kind == 0 ? adam_step(1, 0.0) : kind == 1 ? adamw_step(1, 0.0, 0.1) : sgd_step(1, 0.9); \
            if (kind != 1) opt.l2 = 0.1;                                                                            \
            for (int64_t j = 0; j < P; j++) theta[j] = t0[j], m[j] = 0, v[j] = 0;                                   \
            int rc = lstm_update_##SUF(&opt, P, 2, theta, m, kind < 2 ? v : NULL, grad);                            \
            EXPECT(rc == 0, "update of kind %d: %s", kind, lstm_error_message(rc));                                 \
            for (int64_t j = 0; j < P; j++) {                                                                       \
                const double p = (double)t0[j], g = (double)grad[j] + opt.l2 * p, p_dec = p * opt.decay_factor;    \
                const double mm = opt.one_minus_beta1 * g, vv = opt.one_minus_beta2 * g * g;                        \
                const double want = kind == 2 ? p - opt.lr * g                                                      \
                                              : p_dec - opt.step_size * mm / (sqrt(vv) / opt.bias2_sqrt + opt.eps); \
                EXPECT(fabs((double)theta[j] - want) <= tol * (1.0 + fabs(want)), "update of kind %d, %lld: %.9g, " \
                       "expected %.9g", kind, (long long)j, (double)theta[j], want);                                \
            }                                                                                                       \
        }                                                                                                           \
        free(theta), free(grad), free(t0), free(m), free(v);                                                        \
    }

DEFINE_DROPOUT_CHECK(float, f32)
DEFINE_DROPOUT_CHECK(double, f64)
DEFINE_UPDATE_CHECK(float, f32)
DEFINE_UPDATE_CHECK(double, f64)

/* Finite differences on a few parameters of the float64 gradient `grad` (float32 is too coarse), and
 * the optimizers: fused steps of Adam (clipping, L2), AdamW, SGD (momentum and L2, none), the update
 * alone, and its refusals of constants the host never computes. */
#define DEFINE_STEPS(real, SUF)                                                                                     \
    static void check_fd_##SUF(const lstm_dims *d, const int64_t *offs, int64_t P, real *theta, const real *x,      \
                               const real *yr, const int64_t *yc, const real *grad, void *ws, int64_t ws_bytes)     \
    {                                                                                                               \
        for (int64_t probe = 0; probe < 6; probe++) {                                                               \
            const int64_t j = (probe * 7919) % P;                                                                   \
            const real keep = theta[j], h = (real)1e-6;                                                             \
            double lp, lm;                                                                                          \
            real *g2 = xmalloc(sizeof(real) * (size_t)P);                                                           \
            theta[j] = keep + h;                                                                                    \
            lstm_loss_grad_##SUF(d, offs, P, theta, x, yr, yc, g2, &lp, ws, ws_bytes);                              \
            theta[j] = keep - h;                                                                                    \
            lstm_loss_grad_##SUF(d, offs, P, theta, x, yr, yc, g2, &lm, ws, ws_bytes);                              \
            theta[j] = keep;                                                                                        \
            const double fd = (lp - lm) / (2.0 * (double)h);                                                        \
            EXPECT(fabs(fd - (double)grad[j]) <= 1e-6 + 1e-4 * fabs(fd), "gradient %lld: %.9g, finite diff %.9g",   \
                   (long long)j, (double)grad[j], fd);                                                              \
            free(g2);                                                                                               \
        }                                                                                                           \
    }                                                                                                               \
                                                                                                                    \
    static void train_##SUF(const lstm_dims *d, const int64_t *offs, int64_t P, real *theta, real *m, real *v,      \
                            const real *x, const real *yr, const int64_t *yc, real *grad, void *ws, int64_t ws_bytes) \
    {                                                                                                               \
        double loss = -1;                                                                                           \
        int rc;                                                                                                     \
        lstm_optim opt;                                                                                             \
        for (int64_t step = 1; step <= 3; step++) { /* Adam with clipping, with L2, then AdamW */                   \
            opt = step == 3 ? adamw_step(step, 0.5, 0.1) : adam_step(step, 0.5);                                    \
            opt.l2 = step == 2 ? 0.1 : 0.0;                                                                         \
            rc = lstm_train_step_##SUF(d, &opt, offs, P, theta, m, v, x, yr, yc, grad, &loss, ws, ws_bytes);        \
            EXPECT(rc == 0 && isfinite(loss), "adam step: %s", lstm_error_message(rc));                             \
        }                                                                                                           \
        for (int64_t step = 1; step <= 2; step++) { /* SGD with momentum (and L2), then without */                  \
            opt = sgd_step(step, 0.9);                                                                              \
            opt.l2 = step == 2 ? 0.1 : 0.0;                                                                         \
            rc = lstm_train_step_##SUF(d, &opt, offs, P, theta, m, NULL, x, yr, yc, grad, &loss, ws, ws_bytes);     \
            EXPECT(rc == 0, "sgd momentum step: %s", lstm_error_message(rc));                                       \
        }                                                                                                           \
        opt = sgd_step(3, 0.0);                                                                                     \
        rc = lstm_train_step_##SUF(d, &opt, offs, P, theta, NULL, NULL, x, yr, yc, grad, &loss, ws, ws_bytes);      \
        EXPECT(rc == 0, "sgd step: %s", lstm_error_message(rc));                                                    \
        opt = adamw_step(4, 0.5, 0.1); /* the update alone (a gradient changed in between: data-parallel training) */ \
        rc = lstm_update_##SUF(&opt, P, d->threads, theta, m, v, grad);                                             \
        EXPECT(rc == 0, "update alone: %s", lstm_error_message(rc));                                                \
        rc = lstm_update_##SUF(&opt, 0, d->threads, theta, m, v, grad);                                             \
        EXPECT(rc == LSTM_EDIMS, "update of 0 parameters accepted (%d)", rc);                                       \
        opt.step_size = 0.0; /* constants the host never computes */                                                \
        rc = lstm_update_##SUF(&opt, P, d->threads, theta, m, v, grad);                                             \
        EXPECT(rc == LSTM_EARG, "an Adam step size of 0 accepted (%d)", rc);                                        \
        opt = adamw_step(4, 0.5, 0.1), opt.decay_factor = NAN;                                                      \
        rc = lstm_update_##SUF(&opt, P, d->threads, theta, m, v, grad);                                             \
        EXPECT(rc == LSTM_EARG, "a decay factor of NaN accepted (%d)", rc);                                         \
        opt = sgd_step(4, 0.0), opt.l2 = -1.0;                                                                      \
        rc = lstm_update_##SUF(&opt, P, d->threads, theta, NULL, NULL, grad);                                       \
        EXPECT(rc == LSTM_EARG, "a negative L2 decay accepted (%d)", rc);                                           \
    }

DEFINE_STEPS(float, f32)
DEFINE_STEPS(double, f64)

/* One case for one dtype: the body is written once for real = float and double. */
#define DEFINE_CASE(real, SUF)                                                                                      \
    static void run_case_##SUF(const lstm_dims *d0, int sequences, int dropout)                                    \
    {                                                                                                               \
        lstm_dims dd = *d0;                                                                                         \
        const lstm_dims *d = &dd;                                                                                   \
        const int64_t B = d->batch, T = d->steps, D = d->input_size, O = d->output_size, L = d->layers;             \
        const int64_t Tout = d->many_to_many ? T : 1;                                                               \
        int64_t *offs = xmalloc(sizeof(int64_t) * 3 * (size_t)(L + 1));                                             \
        const int64_t P = layout(d, offs);                                                                          \
        real *theta = xmalloc(sizeof(real) * (size_t)P), *grad = xmalloc(sizeof(real) * (size_t)P);                 \
        real *m = xmalloc(sizeof(real) * (size_t)P), *v = xmalloc(sizeof(real) * (size_t)P);                        \
        real *x = xmalloc(sizeof(real) * (size_t)(B * T * D)), *y = xmalloc(sizeof(real) * (size_t)(B * Tout * O)); \
        real *y_hat = xmalloc(sizeof(real) * (size_t)(B * Tout * O));                                               \
        int64_t *cls = xmalloc(sizeof(int64_t) * (size_t)(B * Tout));                                               \
        for (int64_t j = 0; j < P; j++) theta[j] = (real)(0.8 * uniform()), m[j] = 0, v[j] = 0;                   \
        for (int64_t j = 0; j < B * T * D; j++) x[j] = (real)(2.0 * uniform());                                     \
        for (int64_t j = 0; j < B * Tout * O; j++) y[j] = (real)uniform();                                          \
        for (int64_t j = 0; j < B * Tout; j++) cls[j] = (int64_t)((uniform() + 1.0) * 0.5 * (double)O) % O;       \
        const int64_t HL = L * B * d->hidden_size;                                                                 \
        int64_t *len = xmalloc(sizeof(int64_t) * (size_t)B);                                                        \
        real *h0 = xmalloc(sizeof(real) * (size_t)HL), *c0 = xmalloc(sizeof(real) * (size_t)HL);                    \
        real *hn = xmalloc(sizeof(real) * (size_t)HL), *cn = xmalloc(sizeof(real) * (size_t)HL);                    \
        for (int64_t b = 0; b < B; b++) len[b] = b == 0 ? T : b == B - 1 ? 1 : max64(1, T - b); /* longest first */ \
        for (int64_t j = 0; j < HL; j++) h0[j] = (real)(0.5 * uniform()), c0[j] = (real)uniform();                 \
        if (sequences) dd.lengths = len, dd.h0 = h0, dd.c0 = c0, dd.hn = hn, dd.cn = cn;                           \
        uint32_t *dkeys = xmalloc(sizeof(uint32_t) * (size_t)(L + 1)), *drows = xmalloc(sizeof(uint32_t) * (size_t)B); \
        for (int64_t k = 0; k <= L; k++) dkeys[k] = 0x9E3779B9u * (uint32_t)(k + 1);                                \
        for (int64_t b = 0; b < B; b++) drows[b] = (uint32_t)(B - 1 - b) + 4000000000u; /* wraps in the counter */ \
        if (dropout) set_dropout(&dd, dkeys, drows, (double)(real)(1.0 / 0.6));                                  \
        const int64_t ws_bytes = lstm_workspace_bytes(d, (int64_t)sizeof(real));                                    \
        EXPECT(ws_bytes > 0, "workspace size %lld", (long long)ws_bytes);                                           \
        void *ws = xmalloc((size_t)ws_bytes);                                                                       \
        const real *yr = d->xent ? NULL : y;                                                                        \
        const int64_t *yc = d->xent ? cls : NULL;                                                                   \
        double loss = -1;                                                                                           \
        int rc = lstm_forward_##SUF(d, offs, P, theta, x, y_hat, ws, ws_bytes);                                     \
        EXPECT(rc == 0, "forward: %s", lstm_error_message(rc));                                                     \
        for (int64_t j = 0; j < B * Tout * O; j++) EXPECT(isfinite(y_hat[j]), "forward output %lld", (long long)j); \
        for (int64_t j = 0; sequences && j < HL; j++) EXPECT(isfinite(hn[j]) && isfinite(cn[j]), "final state %lld", \
                                                             (long long)j);                                         \
        rc = lstm_loss_grad_##SUF(d, offs, P, theta, x, yr, yc, grad, &loss, ws, ws_bytes);                         \
        EXPECT(rc == 0 && isfinite(loss) && loss >= 0, "loss_grad: %s, loss %g", lstm_error_message(rc), loss);   \
        for (int64_t j = 0; j < P; j++) EXPECT(isfinite(grad[j]), "gradient %lld", (long long)j);                   \
        if (dropout) check_dropout_##SUF(d, offs, P, theta, x, yr, yc, loss, ws, ws_bytes);                         \
        if (sizeof(real) == 8) check_fd_##SUF(d, offs, P, theta, x, yr, yc, grad, ws, ws_bytes);                    \
        train_##SUF(d, offs, P, theta, m, v, x, yr, yc, grad, ws, ws_bytes);                                        \
        for (int64_t j = 0; j < P; j++) EXPECT(isfinite(theta[j]), "parameter %lld after training", (long long)j); \
        /* refusals: a workspace one byte short, a shifted layout, a class id out of range */                       \
        rc = lstm_forward_##SUF(d, offs, P, theta, x, y_hat, ws, ws_bytes - ALIGN - 1);                             \
        EXPECT(rc == LSTM_EWORKSPACE, "short workspace accepted (%d)", rc);                                         \
        offs[1] += 1;                                                                                               \
        rc = lstm_forward_##SUF(d, offs, P, theta, x, y_hat, ws, ws_bytes);                                         \
        EXPECT(rc == LSTM_ELAYOUT, "wrong layout accepted (%d)", rc);                                               \
        offs[1] -= 1;                                                                                               \
        if (d->xent) {                                                                                              \
            cls[B * Tout - 1] = O;                                                                                  \
            rc = lstm_loss_grad_##SUF(d, offs, P, theta, x, NULL, cls, grad, &loss, ws, ws_bytes);                  \
            EXPECT(rc == LSTM_ECLASS, "class id out of range accepted (%d)", rc);                                   \
        }                                                                                                           \
        if (sequences && B > 1) { /* lengths out of order, then out of range */                                    \
            len[B - 1] = T;                                                                                         \
            rc = lstm_forward_##SUF(d, offs, P, theta, x, y_hat, ws, ws_bytes);                                     \
            const int in_order = (B - 1) % lstm_shard_rows(d, (int64_t)sizeof(real)) == 0 || len[B - 2] == T;      \
            EXPECT(rc == (in_order ? 0 : LSTM_ELENGTHS), "lengths out of order: %d", rc);                   \
            len[B - 1] = 0;                                                                                         \
            rc = lstm_forward_##SUF(d, offs, P, theta, x, y_hat, ws, ws_bytes);                                     \
            EXPECT(rc == LSTM_ELENGTHS, "a length of 0 accepted (%d)", rc);                                         \
        }                                                                                                           \
        free(len), free(h0), free(c0), free(hn), free(cn), free(dkeys), free(drows);                                \
        free(offs), free(theta), free(grad), free(m), free(v), free(x), free(y), free(y_hat), free(cls), free(ws);  \
    }                                                                                                               \
                                                                                                                    \
    static void run_matmul_##SUF(int64_t M, int64_t N, int64_t K, int trans_a, int pack)                            \
    {                                                                                                               \
        const int64_t nr = lstm_panel_width((int64_t)sizeof(real));                                                 \
        const int64_t ldb = pack ? N : round_up(N, nr);                                                             \
        real *A = xmalloc(sizeof(real) * (size_t)(M * K)), *Bm = xmalloc(sizeof(real) * (size_t)(K * ldb));         \
        real *C = xmalloc(sizeof(real) * (size_t)(M * N));                                                          \
        for (int64_t j = 0; j < M * K; j++) A[j] = (real)uniform();                                                 \
        for (int64_t j = 0; j < K * ldb; j++) Bm[j] = (real)uniform();                                              \
        const int64_t ws_bytes = lstm_matmul_workspace_bytes(K, N, (int64_t)sizeof(real));                          \
        void *ws = xmalloc((size_t)ws_bytes);                                                                       \
        const int64_t ars = trans_a ? 1 : K, acs = trans_a ? M : 1;                                                 \
        int rc = lstm_matmul_##SUF(M, N, K, A, ars, acs, Bm, ldb, pack, C, N, ws, ws_bytes, 1);                     \
        EXPECT(rc == 0, "matmul: %s", lstm_error_message(rc));                                                      \
        for (int64_t i = 0; i < M; i++)                                                                             \
            for (int64_t j = 0; j < N; j++) {                                                                       \
                double want = 0;                                                                                    \
                for (int64_t k = 0; k < K; k++) want += (double)A[i * ars + k * acs] * (double)Bm[k * ldb + j];     \
                EXPECT(fabs(want - (double)C[i * N + j]) <= 1e-4 * (1.0 + (double)K), "matmul (%lld,%lld)",        \
                       (long long)i, (long long)j);                                                                 \
            }                                                                                                       \
        free(A), free(Bm), free(C), free(ws);                                                                       \
    }

DEFINE_CASE(float, f32)
DEFINE_CASE(double, f64)

/* symbol ids for the one-hot cases (each < their input size, 3) */
static const int64_t SYMBOLS[64] = {0, 2, 1, 1, 0, 2, 2, 0, 1, 2, 0, 1, 2, 1, 0, 0, 1, 2, 2, 1, 0, 1, 0, 2, 1, 0, 2, 2,
                                    1, 0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 1, 2, 0, 1, 1, 2, 0, 0, 2, 1, 2, 0, 1, 1, 0,
                                    2, 2, 1, 0, 0, 1, 2, 1, 0, 2};

int main(void)
{
    /* batch, steps, input, hidden, output, layers, many_to_many, xent, threads, parallel */
    const lstm_dims cases[] = {
        {5, 3, 2, 5, 3, 1, 0, 0, 2},  /* padding row in the last shard, H not a vector multiple */
        {4, 1, 1, 3, 2, 2, 1, 1, 3},  /* T = 1 (no recurrent product), more threads than rows per shard */
        {7, 4, 3, 9, 4, 3, 1, 0, 2},  /* 3 layers, many-to-many mse */
        {3, 5, 1, 17, 5, 2, 0, 1, 1}, /* one thread, xent many-to-one */
        {1, 2, 4, 1, 1, 1, 0, 0, 4},  /* one sequence, H = 1 */
        {9, 6, 2, 33, 2, 2, 1, 1, 2}, /* H past two panels */
        /* the threads sharing one shard's hidden units: H not a panel multiple, fewer rows than
         * threads, more threads than panels (an idle thread), several layers */
        {1, 4, 3, 37, 2, 2, 1, 1, 2, LSTM_PAR_UNITS},
        {3, 3, 2, 20, 3, 3, 0, 0, 3, LSTM_PAR_UNITS},
        {2, 5, 1, 256, 1, 1, 0, 0, 2, LSTM_PAR_AUTO}, /* auto picks the team */
        /* one-hot input given as symbol ids (gathers and scatters instead of products) */
        {5, 4, 3, 9, 3, 2, 1, 1, 2, LSTM_PAR_SHARDS, SYMBOLS},
        {3, 6, 3, 20, 3, 1, 1, 1, 2, LSTM_PAR_UNITS, SYMBOLS},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int sequences = 0; sequences < 2; sequences++)
            for (int dropout = 0; dropout < 2; dropout++) {
                run_case_f32(&cases[k], sequences, dropout);
                run_case_f64(&cases[k], sequences, dropout);
            }
    check_update_f32();
    check_update_f64();
    const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {13, 37, 300}, {100, 20, 3}, {6, 16, 257}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int trans = 0; trans < 2; trans++)
            for (int pack = 0; pack < 2; pack++) {
                run_matmul_f32(shapes[k][0], shapes[k][1], shapes[k][2], trans, pack);
                run_matmul_f64(shapes[k][0], shapes[k][1], shapes[k][2], trans, pack);
            }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("asan_driver: all cases passed\n");
    return 0;
}
