/* Torn-read checker for tests/test_shm.py: at least N snapshots (and at least SECONDS of them)
 * through chronotick_shm.h while a writer rewrites the segment with payloads whose fields all
 * derive from one counter i. Usage: torn_reader SEGMENT N [SECONDS] */
#include "../../clients/c/chronotick_shm.h"

int main(int argc, char **argv) {
    ct_shm_reader r;
    long n = argc > 2 ? atol(argv[2]) : 1000000, torn = 0, changes = 0, busy = 0, k;
    double min_s = argc > 3 ? atof(argv[3]) : 0.0;
    int64_t start = ct__clock(CLOCK_MONOTONIC);
    if (argc < 2 || ct_shm_open(&r, argv[1]) < 0) { fprintf(stderr, "open: %s\n", r.why); return 2; }
    uint64_t last = 0;
    char want[64];
    for (k = 0; k < n || (k % 65536 != 0 || ct__clock(CLOCK_MONOTONIC) - start < min_s * 1e9); k++) {
        if (ct_shm_snapshot(&r) < 0) { busy++; continue; } /* no answer is not a torn one */
        if (r.gen == last) continue;
        last = r.gen;
        changes++;
        const struct ct_shm_params *p = &r.p;
        int64_t i = p->t_ref_ns;
        snprintf(want, sizeof want, "s%lld", (long long)i);
        if (p->t_last_ns != 2 * i || p->stale_after_ns != 3 * i || p->void_after_ns != 4 * i ||
            p->write_raw_ns != 5 * i || p->leap_raw_ns != 6 * i || p->offset_ref != (double)i * 1e-9 ||
            p->freq != -(double)i || strcmp(r.source, want) != 0)
            torn++;
    }
    printf("{\"reads\": %ld, \"torn\": %ld, \"snapshots\": %ld, \"busy\": %ld, "
           "\"seconds\": %.3f}\n", k, torn, changes, busy,
           (ct__clock(CLOCK_MONOTONIC) - start) * 1e-9);
    return 0;
}
