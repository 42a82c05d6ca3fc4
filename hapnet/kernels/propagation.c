/* The fused CPU kernels of one propagation step (hapnet/propagation.py, whose torch operations
 * compute the same and are the reference):
 *
 *   attention_forward / _backward: the attention weights, scores and softmax in one call,
 *     alpha_e = softmax over the edges e' of target t_e of s_e',
 *     s_e = u . tanh(query[t_e] + keys_g[src_e])       (edge e of group g);
 *   weighted_sum_forward / _backward: out_t = sum over the edges e of t of alpha_e values_g[src_e].
 *
 * Candidates come in groups whose rows live in one tensor each. In group g, edge i belongs to
 * target targets[g][i] (NULL: target i; else sorted, with offsets[g][t] the first edge of t) and
 * reads row sources[g][i] (NULL: row i). Rows are float32 with a row stride (projections are
 * column slices of one product). The edges of all groups are numbered group after group, as
 * torch.cat lays them out. Functions return 0, or 1 when memory ran out.
 *
 * Built by hapnet/native.py with the system C compiler; OpenMP resolves to the runtime torch
 * already loaded, and every call takes its thread count from torch. Rows that several edges add
 * to are split between threads by row, never shared, so results do not depend on timing.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define PARALLEL_MIN 32768 /* edges x row width below which one thread is faster */

static inline int64_t pick(const int64_t *index, int64_t i) { return index ? index[i] : i; }

/* Edges [first, last) of target t in a group (one edge, t itself, when targets are NULL). */
static inline void edges_of(const int64_t *offsets, int64_t count, int64_t num_targets, int64_t t,
                            const int64_t *target, int64_t *first, int64_t *last) {
    if (!target) {
        *first = t;
        *last = t + 1;
    } else {
        *first = offsets[t];
        *last = t + 1 < num_targets ? offsets[t + 1] : count;
    }
}

/* rows[index_e] += add[e] (rows of width floats, add's rows packed) for the `count` edges of one
 * group, on the calling thread's share of the rows: call it inside a parallel region, where
 * thread i of n owns rows [num_rows i / n, num_rows (i + 1) / n). once: every row is some edge's
 * exactly once, so rows (not zeroed) are written, not added to. */
static void scatter_rows(float *rows, int64_t row_stride, int64_t num_rows, const int64_t *index,
                         const float *add, int64_t count, int64_t width, int64_t once) {
    int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    int64_t low = num_rows * me / threads, high = num_rows * (me + 1) / threads;
    for (int64_t e = 0; e < count; e++) {
        int64_t r = pick(index, e);
        if (r < low || r >= high) continue;
        float *row = rows + r * row_stride;
        const float *a = add + e * width;
        if (once)
            for (int64_t j = 0; j < width; j++) row[j] = a[j];
        else
            for (int64_t j = 0; j < width; j++) row[j] += a[j];
    }
}

/* The softmax over each target's candidates, in place: scores in, alpha out. */
static int segment_softmax(float *alpha, int64_t num_targets, int64_t num_groups,
                           const int64_t *const *targets, const int64_t *counts) {
    float *top = malloc((num_targets + 1) * sizeof(float)); /* + 1: never malloc(0) */
    float *total = calloc(num_targets + 1, sizeof(float));
    if (!top || !total) {
        free(top);
        free(total);
        return 1;
    }
    for (int64_t t = 0; t < num_targets; t++) top[t] = -FLT_MAX; /* scores are finite: |s| <= sum |u| */
    float *a = alpha;
    for (int64_t g = 0; g < num_groups; a += counts[g], g++)
        for (int64_t i = 0; i < counts[g]; i++) {
            int64_t t = pick(targets[g], i);
            if (a[i] > top[t]) top[t] = a[i];
        }
    a = alpha;
    for (int64_t g = 0; g < num_groups; a += counts[g], g++)
        for (int64_t i = 0; i < counts[g]; i++) {
            int64_t t = pick(targets[g], i);
            a[i] = expf(a[i] - top[t]);
            total[t] += a[i];
        }
    a = alpha;
    for (int64_t g = 0; g < num_groups; a += counts[g], g++)
        for (int64_t i = 0; i < counts[g]; i++) a[i] /= total[pick(targets[g], i)];
    free(top);
    free(total);
    return 0;
}

/* alpha [E]; tanh_out [E, A] (NULL: not kept, then A <= 1024: one edge's tanh lives on the
 * stack) holds tanh of every edge for the backward. */
int attention_forward(const float *query, int64_t query_stride, int64_t num_targets, int64_t A,
                      const float *u, int64_t num_groups, const float *const *keys,
                      const int64_t *key_strides, const int64_t *const *targets,
                      const int64_t *const *sources, const int64_t *counts, float *alpha,
                      float *tanh_out, int num_threads) {
    int64_t start = 0;
    for (int64_t g = 0; g < num_groups; start += counts[g], g++) {
        const float *key = keys[g];
        const int64_t *target = targets[g], *source = sources[g];
        int64_t count = counts[g], key_stride = key_strides[g];
        float *score = alpha + start;
        float *th_all = tanh_out ? tanh_out + start * A : NULL;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (count * A >= PARALLEL_MIN)
        for (int64_t i = 0; i < count; i++) {
            const float *q = query + pick(target, i) * query_stride;
            const float *k = key + pick(source, i) * key_stride;
            float scratch[th_all ? 1 : A]; /* one row, only when tanh is not kept */
            float *th = th_all ? th_all + i * A : scratch;
            for (int64_t j = 0; j < A; j++) th[j] = tanhf(q[j] + k[j]);
            float s = 0.f;
            for (int64_t j = 0; j < A; j++) s += th[j] * u[j];
            score[i] = s;
        }
    }
    return segment_softmax(alpha, num_targets, num_groups, targets, counts);
}

/* Gradients from grad_alpha [E]: added to grad_query [T, A] (zeroed by the caller), to
 * grad_keys[g] (zeroed by the caller unless once[g]: each key row is read by one edge, and is
 * written), written to grad_u [A]. dz: [E, A] scratch. */
int attention_backward(const float *grad_alpha, const float *alpha, const float *tanh_all,
                       const float *u, int64_t num_targets, int64_t A, int64_t num_groups,
                       const int64_t *const *targets, const int64_t *const *sources,
                       const int64_t *counts, float *grad_query, int64_t grad_query_stride,
                       float *const *grad_keys, const int64_t *grad_key_strides,
                       const int64_t *key_rows, const int64_t *once, float *grad_u, float *dz,
                       int num_threads) {
    int64_t num_edges = 0;
    for (int64_t g = 0; g < num_groups; g++) num_edges += counts[g];
    /* Softmax backward: d s_e = alpha_e (d alpha_e - sum over t_e's edges of alpha d alpha). */
    float *dot = calloc(num_targets + 1, sizeof(float));
    float *grad_score = malloc((num_edges + 1) * sizeof(float));
    float *partials = calloc((size_t)num_threads * A, sizeof(float)); /* d u per thread */
    if (!dot || !grad_score || !partials) {
        free(dot);
        free(grad_score);
        free(partials);
        return 1;
    }
    int64_t e = 0;
    for (int64_t g = 0; g < num_groups; g++)
        for (int64_t i = 0; i < counts[g]; i++, e++) dot[pick(targets[g], i)] += alpha[e] * grad_alpha[e];
    e = 0;
    for (int64_t g = 0; g < num_groups; g++)
        for (int64_t i = 0; i < counts[g]; i++, e++)
            grad_score[e] = alpha[e] * (grad_alpha[e] - dot[pick(targets[g], i)]);
    free(dot);

    /* Score backward: dz = (1 - tanh^2) d s u; d u = sum_e d s_e tanh_e, summed per thread and
     * then in thread order, so that results do not depend on timing. */
#pragma omp parallel num_threads(num_threads) if (num_edges * A >= PARALLEL_MIN)
    {
        float *partial = partials + (int64_t)omp_get_thread_num() * A;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < num_edges; k++) {
            const float *th = tanh_all + k * A;
            float *d = dz + k * A;
            float ds = grad_score[k];
            for (int64_t j = 0; j < A; j++) {
                partial[j] += ds * th[j];
                d[j] = (1.f - th[j] * th[j]) * ds * u[j];
            }
        }
    }
    memset(grad_u, 0, A * sizeof(float));
    for (int t = 0; t < num_threads; t++)
        for (int64_t j = 0; j < A; j++) grad_u[j] += partials[(int64_t)t * A + j];
    free(partials);
    free(grad_score);

    /* Add dz to the query row of its target and the key row of its source. */
#pragma omp parallel num_threads(num_threads) if (num_edges * A >= PARALLEL_MIN)
    {
        const float *d = dz;
        for (int64_t g = 0; g < num_groups; d += counts[g] * A, g++) {
            scatter_rows(grad_query, grad_query_stride, num_targets, targets[g], d, counts[g], A, 0);
            scatter_rows(grad_keys[g], grad_key_strides[g], key_rows[g], sources[g], d, counts[g], A, once[g]);
        }
    }
    return 0;
}

/* out [T, D] = sum over groups g and edges e of t of alpha_e values_g[src_e]. */
int weighted_sum_forward(int64_t num_targets, int64_t D, int64_t num_groups,
                         const float *const *values, const int64_t *value_strides,
                         const int64_t *const *targets, const int64_t *const *sources,
                         const int64_t *const *offsets, const int64_t *counts, const float *alpha,
                         float *out, int num_threads) {
    int64_t num_edges = 0;
    for (int64_t g = 0; g < num_groups; g++) num_edges += counts[g];
#pragma omp parallel for schedule(dynamic, 16) num_threads(num_threads) if (num_edges * D >= PARALLEL_MIN)
    for (int64_t t = 0; t < num_targets; t++) {
        float *o = out + t * D;
        memset(o, 0, D * sizeof(float));
        const float *a = alpha;
        for (int64_t g = 0; g < num_groups; a += counts[g], g++) {
            int64_t first, last;
            edges_of(offsets[g], counts[g], num_targets, t, targets[g], &first, &last);
            for (int64_t e = first; e < last; e++) {
                const float *v = values[g] + pick(sources[g], e) * value_strides[g];
                float w = a[e];
                for (int64_t j = 0; j < D; j++) o[j] += w * v[j];
            }
        }
    }
    return 0;
}

/* From grad_out [T, D]: grad_alpha [E] (NULL: not wanted) and grad_values[g] (NULL: not wanted)
 * += alpha_e grad_out[t_e] at row src_e (zeroed by the caller unless once[g], as above). */
int weighted_sum_backward(const float *grad_out, int64_t D, int64_t num_groups,
                          const float *const *values, const int64_t *value_strides,
                          const int64_t *value_rows, const int64_t *const *targets,
                          const int64_t *const *sources, const int64_t *counts, const float *alpha, float *grad_alpha,
                          float *const *grad_values, const int64_t *grad_value_strides,
                          const int64_t *once, int num_threads) {
    int64_t num_edges = 0;
    for (int64_t g = 0; g < num_groups; g++) num_edges += counts[g];
    /* One pass over the edges: each reads its grad_out row and its value row once for both
     * gradients. Threads split each group's value rows (see scatter_rows). */
#pragma omp parallel num_threads(num_threads) if (num_edges * D >= PARALLEL_MIN)
    {
        int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t start = 0;
        for (int64_t g = 0; g < num_groups; start += counts[g], g++) {
            int64_t low = value_rows[g] * me / threads, high = value_rows[g] * (me + 1) / threads;
            float *grad_v = grad_values[g];
            for (int64_t e = 0; e < counts[g]; e++) {
                int64_t r = pick(sources[g], e);
                if (r < low || r >= high) continue;
                const float *go = grad_out + pick(targets[g], e) * D;
                if (grad_alpha) {
                    const float *v = values[g] + r * value_strides[g];
                    float s = 0.f;
                    for (int64_t j = 0; j < D; j++) s += go[j] * v[j];
                    grad_alpha[start + e] = s;
                }
                if (grad_v) {
                    float *row = grad_v + r * grad_value_strides[g], w = alpha[start + e];
                    if (once[g])
                        for (int64_t j = 0; j < D; j++) row[j] = w * go[j];
                    else
                        for (int64_t j = 0; j < D; j++) row[j] += w * go[j];
                }
            }
        }
    }
    return 0;
}
