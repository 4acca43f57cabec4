/* chronotick_shm.h: header-only reader of chronotickd's shared-memory segment (layout v3).
 *
 * Corrected time with an error bound at about the cost of reading the clock: the daemon
 * publishes its fit of the reference against CLOCK_MONOTONIC_RAW (see docs/protocol.md,
 * "Shared-memory segment"); each ct_shm_now() reads CLOCK_REALTIME, CLOCK_MONOTONIC_RAW,
 * CLOCK_REALTIME (vDSO, no syscall) and does a few multiplications. No allocation, no lock.
 *
 *   ct_shm_reader r;
 *   if (ct_shm_open(&r, NULL) == 0) {          // NULL: $CHRONOTICK_SHM or /run/chronotick/shm0
 *       ct_time t;
 *       if (ct_shm_now(&r, &t) == 0 && t.status != CT_UNSYNCHRONIZED)
 *           use(t.earliest_ns, t.latest_ns);   // earliest <= true time <= latest
 *       else
 *           ask_the_socket(r.why);             // stepped clock, stopped daemon, other boot...
 *       ct_shm_close(&r);
 *   }
 *
 * A reader is not thread-safe (it caches the last snapshot): one per thread.
 * Consistency: seqlock on a 64-bit generation (odd while the daemon writes) with acquire
 * ordering, plus the payload's CRC-32, checked whenever the generation changes.
 * Build: cc -O2 prog.c -lm. Linux only. Native byte order (as the daemon writes it).
 */
#ifndef CHRONOTICK_SHM_H
#define CHRONOTICK_SHM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* CLOCK_MONOTONIC_RAW, O_CLOEXEC under -std=c11 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CT_SHM_MAGIC 0x4B544843u /* "CHTK" */
#define CT_SHM_VERSION 3
#define CT_SHM_SIZE 256
#define CT_SHM_DEFAULT "/run/chronotick/shm0"
#define CT_SHM_PAYLOAD 24
#define CT_SHM_CHECKSUMMED 192 /* payload bytes covered by the CRC (offsets 24..215) */

#define CT_STATE_NONE 0
#define CT_STATE_TRACKING 1
#define CT_STATE_RESTORED 2
#define CT_FLAG_CLOSED 1
#define CT_FLAG_SOCKET 2 /* the state cannot be expressed here now: ask the socket */
#define CT_FLAG_HOLDOVER 4 /* past void_after: the line extrapolated, not the system clock */
#define CT_LEAP_NONE 0
#define CT_LEAP_INSERT 1
#define CT_LEAP_DELETE 2
#define CT_LEAP_CONFIRMED 1
#define CT_LEAP_SMEAR_DOUBT 2
#define CT_SMEAR_NS 86400000000000LL
#define CT_FLOAT_SLACK_NS 2.0

#define CT_MAX_SLEW_RATE 1e-3
#define CT_STEP_TOLERANCE_NS 1000000LL
#define CT_STALE_WRITES 5
#define CT_WIDE_READ_NS 50000

enum ct_status { CT_UNSYNCHRONIZED = 0, CT_SYNCHRONIZED = 1, CT_FREERUNNING = 2 };

/* The payload at offset 24, exactly as laid out in the segment. */
struct ct_shm_params {
    int64_t epoch_ns, write_raw_ns, write_delta_ns, write_interval_ns;
    int64_t t_ref_ns, t_last_ns, stale_after_ns, void_after_ns; /* CLOCK_MONOTONIC_RAW */
    double offset_ref, freq, var_offset, var_freq, systematic, confidence_k, max_drift;
    double unsync_bound;
    int64_t leap_raw_ns;       /* the pending leap second's RAW instant (leap != 0) */
    uint8_t state, leap, leap_flags, reserved0;
    uint16_t flags, reserved1;
    uint8_t boot_id[16];
    char source[32];
    uint32_t checksum;
    uint8_t reserved2[36];
};
_Static_assert(sizeof(struct ct_shm_params) == CT_SHM_SIZE - CT_SHM_PAYLOAD, "layout v3");

typedef struct {
    int64_t system_time_ns;    /* CLOCK_REALTIME the answer is for */
    int64_t corrected_time_ns; /* system_time_ns + offset_ns */
    int64_t offset_ns;         /* reference - system */
    int64_t bound_ns;          /* half-width, rounded up */
    int64_t earliest_ns, latest_ns;
    int64_t as_of_ns;          /* newest measurement behind the answer (REALTIME; 0: none) */
    int64_t void_after_ns;     /* past this the estimate is dropped (REALTIME; 0: none) */
    int status;                /* enum ct_status */
    int leap;                  /* pending leap second: 1 inserted, 2 deleted (0: none) */
    const char *source;
} ct_time;

typedef struct {
    const uint8_t *seg;
    uint64_t gen; /* generation of `p` (0: none yet) */
    struct ct_shm_params p;
    uint8_t boot_id[16];
    char source[32];
    int check_boot; /* 0: our boot id is unknown, not checked */
    const char *why; /* why the last call failed (static text) */
    /* derived once per snapshot (ct__prepare), so a read is three clock reads + arithmetic */
    const char *refuse;        /* non-NULL: this snapshot cannot answer (the reason) */
    int64_t epoch_wd, sync_until, void_after;
    double off0, vo, vf, sys;  /* ns: offset_ref, k^2 var_offset, k^2 var_freq, systematic */
} ct_shm_reader;

static inline uint32_t ct__crc32(const uint8_t *buf, size_t n) {
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ buf[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static inline int64_t ct__clock(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void ct__boot_id(uint8_t out[16]) {
    const char *path = getenv("CHRONOTICK_BOOT_ID_FILE");
    char text[64] = {0};
    memset(out, 0, 16);
    FILE *f = fopen(path && *path ? path : "/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    int j = 0;
    for (size_t i = 0; i < n && j < 32; i++) {
        char ch = text[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
              : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (v < 0) continue;
        out[j / 2] = (uint8_t)(j % 2 ? out[j / 2] | v : v << 4);
        j++;
    }
}

/* What does not depend on the clock reads, computed once per snapshot. */
static inline void ct__prepare(ct_shm_reader *r) {
    const struct ct_shm_params *p = &r->p;
    static const uint8_t zero[16];
    double k2 = p->confidence_k * p->confidence_k;
    r->refuse = NULL;
    if (p->flags & CT_FLAG_CLOSED) r->refuse = "the daemon stopped writing the segment";
    else if (p->flags & CT_FLAG_SOCKET) r->refuse = "the daemon's state needs the socket now";
    else if (r->check_boot && memcmp(p->boot_id, zero, 16) != 0 &&
             memcmp(p->boot_id, r->boot_id, 16) != 0)
        r->refuse = "segment from another boot";
    r->epoch_wd = p->epoch_ns + p->write_delta_ns;
    int64_t stale = p->write_raw_ns + CT_STALE_WRITES * p->write_interval_ns;
    r->sync_until = p->state == CT_STATE_RESTORED ? INT64_MIN
                  : p->stale_after_ns < stale ? p->stale_after_ns : stale;
    r->void_after = p->state == CT_STATE_NONE ? INT64_MIN : p->void_after_ns;
    r->off0 = p->offset_ref * 1e9;
    r->vo = k2 * p->var_offset * 1e18;
    r->vf = k2 * p->var_freq;
    r->sys = p->systematic * 1e9 + CT_FLOAT_SLACK_NS;
}

/* Refresh r->p when the generation moved. 0: r->p is a consistent snapshot; -1: none. */
static inline int ct_shm_snapshot(ct_shm_reader *r) {
    const uint64_t *genp = (const uint64_t *)(r->seg + 16);
    uint64_t g1 = __atomic_load_n(genp, __ATOMIC_ACQUIRE);
    if (g1 == r->gen && g1) return 0;
    for (long tries = 0; tries < 1000000; tries++) {
        if (g1 == 0) { r->why = "segment never written"; break; }
        if (!(g1 & 1)) {
            struct ct_shm_params tmp;
            memcpy(&tmp, r->seg + CT_SHM_PAYLOAD, sizeof tmp);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            uint64_t g2 = __atomic_load_n(genp, __ATOMIC_RELAXED);
            if (g1 == g2 && ct__crc32((const uint8_t *)&tmp, CT_SHM_CHECKSUMMED) == tmp.checksum) {
                r->p = tmp;
                r->gen = g1;
                memcpy(r->source, tmp.source, sizeof r->source);
                r->source[sizeof r->source - 1] = 0;
                ct__prepare(r);
                return 0;
            }
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        g1 = __atomic_load_n(genp, __ATOMIC_ACQUIRE);
    }
    if (r->gen) return 0; /* a writer mid-update: the last snapshot is still a promise */
    if (g1) r->why = "no consistent snapshot (writer stuck mid-update)";
    return -1;
}

/* 0 on success; -1 with errno set and r->why explaining. */
static inline int ct_shm_open(ct_shm_reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    if (!path || !*path) path = getenv("CHRONOTICK_SHM");
    if (!path || !*path) path = CT_SHM_DEFAULT;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { r->why = "cannot open the segment (is chronotickd running with shm.path?)"; return -1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < CT_SHM_SIZE) {
        close(fd);
        r->why = "not a ChronoTick segment (too small)";
        errno = EPROTO;
        return -1;
    }
    void *m = mmap(NULL, CT_SHM_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) { r->why = "mmap failed"; return -1; }
    r->seg = (const uint8_t *)m;
    uint32_t magic, size;
    uint16_t version;
    memcpy(&magic, r->seg, 4);
    memcpy(&version, r->seg + 4, 2);
    memcpy(&size, r->seg + 8, 4);
    if (magic != CT_SHM_MAGIC || version != CT_SHM_VERSION || size != CT_SHM_SIZE) {
        munmap(m, CT_SHM_SIZE);
        r->seg = NULL;
        r->why = "not a ChronoTick v3 segment (magic, version or size)";
        errno = EPROTO;
        return -1;
    }
    ct__boot_id(r->boot_id);
    for (int i = 0; i < 16; i++) r->check_boot |= r->boot_id[i];
    return 0;
}

static inline void ct_shm_close(ct_shm_reader *r) {
    if (r->seg) munmap((void *)r->seg, CT_SHM_SIZE);
    r->seg = NULL;
}

/* The pending leap's (shift, extra bound) in ns at raw: chronotickd/core/leap.py's rule. */
static inline void ct__leap(const struct ct_shm_params *p, int64_t raw, double *shift,
                            double *extra) {
    double s = p->leap == CT_LEAP_DELETE ? -1e9 : 1e9;
    double step = raw >= p->leap_raw_ns ? -s : 0.0, lo = step, hi = step;
    if (!(p->leap_flags & CT_LEAP_CONFIRMED) && raw >= p->leap_raw_ns) {
        lo = lo < 0.0 ? lo : 0.0;
        hi = hi > 0.0 ? hi : 0.0;
    }
    if (p->leap_flags & CT_LEAP_SMEAR_DOUBT) {
        double frac = (double)(raw - (p->leap_raw_ns - CT_SMEAR_NS / 2)) / (double)CT_SMEAR_NS;
        frac = frac < 0.0 ? 0.0 : frac > 1.0 ? 1.0 : frac;
        double sm = -s * frac;
        lo = sm < lo ? sm : lo;
        hi = sm > hi ? sm : hi;
    }
    *shift = (lo + hi) / 2;
    *extra = (hi - lo) / 2;
}

/* Corrected time now. 0: *out filled (check out->status); -1: the segment cannot answer
 * honestly now (r->why says why): ask the daemon's socket instead. */
static inline int ct_shm_now(ct_shm_reader *r, ct_time *out) {
    if (ct_shm_snapshot(r) < 0) return -1;
    const struct ct_shm_params *p = &r->p;
    int64_t real1 = ct__clock(CLOCK_REALTIME);
    int64_t raw = ct__clock(CLOCK_MONOTONIC_RAW);
    int64_t real2 = ct__clock(CLOCK_REALTIME);
    if (real2 - real1 > CT_WIDE_READ_NS || real2 < real1) { /* preempted or stepped: again */
        int64_t r1 = ct__clock(CLOCK_REALTIME), rw = ct__clock(CLOCK_MONOTONIC_RAW);
        int64_t r2 = ct__clock(CLOCK_REALTIME);
        if (r2 >= r1 && (r2 - r1 < real2 - real1 || real2 < real1)) { real1 = r1; raw = rw; real2 = r2; }
        if (real2 < real1) { r->why = "CLOCK_REALTIME stepped while reading it"; return -1; }
    }
    int64_t width = real2 - real1, real = real1 + width / 2;
    if (r->refuse) { r->why = r->refuse; return -1; }
    int64_t rr = real - raw, since = raw - p->write_raw_ns; /* rr = epoch + delta */
    if (since < -1000000000LL) { r->why = "segment written in the future"; return -1; }
    /* δ is known to ±width: a preemption between the reads widens it, never hides a step */
    int64_t step = rr - r->epoch_wd;
    if ((step < 0 ? -step : step) > CT_STEP_TOLERANCE_NS + width + (since >> 10)) {
        r->why = "CLOCK_REALTIME stepped or the system slept since the last write";
        return -1;
    }
    out->system_time_ns = real;
    out->leap = p->leap;
    int64_t hb;
    int is_void = raw > r->void_after;
    if (is_void && !(p->flags & CT_FLAG_HOLDOVER)) {
        hb = (int64_t)(p->unsync_bound * 1e9) + width / 2 + 1;
        out->corrected_time_ns = real;
        out->status = CT_UNSYNCHRONIZED;
        out->as_of_ns = out->void_after_ns = 0;
        out->source = "system";
    } else {
        int64_t d = raw - p->t_ref_ns, age = raw - p->t_last_ns;
        double dd = (double)d;
        double th = r->off0 + p->freq * dd;
        double b = r->sys + sqrt(r->vo + r->vf * dd * dd)
                 + (age > 0 ? p->max_drift * (double)age : 0.0) + (double)(width >> 1);
        if (p->leap != CT_LEAP_NONE) {
            double shift, extra;
            ct__leap(p, raw, &shift, &extra);
            th += shift;
            b += extra;
        }
        /* the reference is raw + epoch + theta; rounding theta moves it by <= 0.5 ns and
         * truncating b by < 1 ns, so corrected +- (trunc(b) + 2) contains [theta-b, theta+b] */
        out->corrected_time_ns = raw + p->epoch_ns + (int64_t)(th + (th >= 0 ? 0.5 : -0.5));
        hb = (int64_t)b + 2;
        out->status = raw <= r->sync_until ? CT_SYNCHRONIZED : CT_FREERUNNING;
        if (is_void) { /* holdover: the line's guess, vouched for no better than the system clock */
            int64_t hu = (int64_t)(p->unsync_bound * 1e9) + width / 2 + 2;
            if (hu > hb) hb = hu;
            out->status = CT_UNSYNCHRONIZED;
        }
        out->as_of_ns = p->t_last_ns + rr;
        out->void_after_ns = p->void_after_ns + rr;
        out->source = r->source;
    }
    out->offset_ns = out->corrected_time_ns - real;
    out->bound_ns = hb;
    out->earliest_ns = out->corrected_time_ns - hb;
    out->latest_ns = out->corrected_time_ns + hb;
    return 0;
}

static inline const char *ct_status_name(int status) {
    return status == CT_SYNCHRONIZED ? "synchronized"
         : status == CT_FREERUNNING ? "freerunning" : "unsynchronized";
}

#endif /* CHRONOTICK_SHM_H */
