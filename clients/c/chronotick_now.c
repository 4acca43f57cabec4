/* chronotick_now: print chronotickd's corrected time from the shared-memory segment.
 *
 *   cc -O2 -o chronotick_now chronotick_now.c -lm
 *   ./chronotick_now [SEGMENT]            one answer as JSON (the socket's `now` fields)
 *   ./chronotick_now --bench N [SEGMENT]  N timed reads: ns per read, p50 and p99
 *
 * Exit status 3 when the segment cannot answer (the message says why; ask the socket).
 */
#include "chronotick_shm.h"

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int bench(ct_shm_reader *r, long n) {
    int64_t *lat = malloc(sizeof(int64_t) * (size_t)n);
    ct_time t;
    if (!lat) return 1;
    for (long i = 0; i < 1000; i++) ct_shm_now(r, &t); /* warm up */
    int64_t start = ct__clock(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) { /* batches of 16 calls: the timer itself costs ~20 ns */
        int64_t a = ct__clock(CLOCK_MONOTONIC);
        for (int j = 0; j < 16; j++)
            if (ct_shm_now(r, &t) < 0) { fprintf(stderr, "chronotick_now: %s\n", r->why); return 3; }
        lat[i] = (ct__clock(CLOCK_MONOTONIC) - a) / 16;
    }
    int64_t total = ct__clock(CLOCK_MONOTONIC) - start;
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    printf("{\"reads\": %ld, \"p50_ns\": %lld, \"p99_ns\": %lld, \"reads_per_s\": %.0f}\n",
           n * 16, (long long)lat[n / 2], (long long)lat[n * 99 / 100],
           n * 16 / (total * 1e-9));
    free(lat);
    return 0;
}

int main(int argc, char **argv) {
    long n = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench") && i + 1 < argc) n = atol(argv[++i]);
        else path = argv[i];
    }
    ct_shm_reader r;
    if (ct_shm_open(&r, path) < 0) {
        fprintf(stderr, "chronotick_now: %s: %s\n", path ? path : CT_SHM_DEFAULT, r.why);
        return 3;
    }
    if (n > 0) return bench(&r, n);
    ct_time t;
    if (ct_shm_now(&r, &t) < 0) {
        fprintf(stderr, "chronotick_now: %s; ask the daemon's socket (chronotick-cli now)\n", r.why);
        return 3;
    }
    printf("{\"corrected_time_ns\": %lld, \"system_time_ns\": %lld, \"offset_ns\": %lld, "
           "\"bound_ns\": %lld, \"earliest_ns\": %lld, \"latest_ns\": %lld, \"status\": \"%s\", "
           "\"source\": \"%s\", \"as_of_ns\": %lld, \"void_after_ns\": %lld}\n",
           (long long)t.corrected_time_ns, (long long)t.system_time_ns, (long long)t.offset_ns,
           (long long)t.bound_ns, (long long)t.earliest_ns, (long long)t.latest_ns,
           ct_status_name(t.status), t.source, (long long)t.as_of_ns, (long long)t.void_after_ns);
    ct_shm_close(&r);
    return 0;
}
