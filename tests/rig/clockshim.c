/* clockshim: a controllable clock for ONE process, loaded with LD_PRELOAD (tests/rig).
 *
 * Model (all parameters in a small mmap'd control file, CLOCKSHIM_CTL, read under a seqlock):
 *   fake REALTIME  = real REALTIME + D(t)
 *   D(t)           = offset + freq * (real - real_base) + slews(t) - leap(t)
 *   slews(t)       = slew_accum + slew_rate * clamp(real - slew_start, 0, slew_end - slew_start)
 *   leap(t)        = 1 s once real REALTIME >= leap_at (an inserted leap second), else 0
 *   fake RAW       = raw_base_fake + (real RAW - raw_base_real) * (1 + freq)   (the oscillator)
 *   fake MONOTONIC = real MONOTONIC + (fake RAW - real RAW) + slews(t)      (slewed, never stepped)
 *   fake BOOTTIME  = fake MONOTONIC + (real BOOTTIME - real MONOTONIC)
 *   fake TAI       = real TAI + D(t) + leap(t)                              (TAI never leaps)
 * The _COARSE variants follow their clock. gettimeofday/time follow REALTIME.
 *
 * adjtimex / __adjtimex / ntp_adjtime / clock_adjtime / ntp_gettime / ntp_gettimex report the
 * control file's maxerror, esterror, status, offset, freq, tai and state. Any attempt to SET
 * the clock (modes != 0, clock_settime, settimeofday, stime, adjtime with a delta) fails with
 * EPERM: the real clock is never touched.
 *
 * Timed waits: CPython passes ABSOLUTE deadlines read from the (fake) clock to the kernel.
 * pthread_cond_timedwait/clockwait, sem_timedwait/clockwait, pthread_mutex_timedlock/clocklock
 * and clock_nanosleep(TIMER_ABSTIME) translate the deadline back to the real clock
 * (remaining = deadline - fake now; real deadline = real now + remaining).
 *
 * Without CLOCKSHIM_CTL (or with an unreadable file) every function behaves like libc.
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wnonnull-compare"
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

#define CTL_MAGIC 0x314d4948534b5443ULL /* "CTKSHIM1" little-endian */
#define CTL_VERSION 1
#define NS 1000000000LL

/* The control file's layout; tests/rig/harness.py packs the same fields (CTL_STRUCT). */
struct ctl {
    uint64_t magic;          /* 0 */
    uint32_t version;        /* 8 */
    uint32_t flags;          /* 12: bit 0 = adjtimex passes the real kernel's values through */
    uint64_t seq;            /* 16: seqlock, odd while the harness writes */
    int64_t real_base_ns;    /* 24: real REALTIME where freq starts counting */
    int64_t offset_ns;       /* 32 */
    double freq;             /* 40: fractional frequency error of the oscillator */
    int64_t raw_base_real_ns;/* 48: real RAW at the base */
    int64_t raw_base_fake_ns;/* 56: fake RAW at the base */
    int64_t slew_start_ns;   /* 64: real REALTIME */
    int64_t slew_end_ns;     /* 72 */
    double slew_rate;        /* 80 */
    int64_t slew_accum_ns;   /* 88: finished slews */
    int64_t leap_at_ns;      /* 96: real REALTIME of an inserted leap; 0 = none */
    int64_t tx_maxerror;     /* 104: µs */
    int64_t tx_esterror;     /* 112: µs */
    int64_t tx_offset;       /* 120 */
    int64_t tx_freq;         /* 128: scaled ppm (2^-16) */
    int32_t tx_status;       /* 136 */
    int32_t tx_state;        /* 140: adjtimex return value (TIME_OK, TIME_INS, TIME_ERROR ...) */
    int32_t tx_tai;          /* 144 */
    int32_t pad;             /* 148 */
};

struct params {
    uint32_t flags;
    int64_t real_base_ns, offset_ns, raw_base_real_ns, raw_base_fake_ns;
    int64_t slew_start_ns, slew_end_ns, slew_accum_ns, leap_at_ns;
    double freq, slew_rate;
    int64_t tx_maxerror, tx_esterror, tx_offset, tx_freq;
    int32_t tx_status, tx_state, tx_tai;
};

static volatile struct ctl *g_ctl;
static int g_init;

typedef int (*gettime_fn)(clockid_t, struct timespec *);
typedef int (*adjtimex_fn)(struct timex *);
typedef int (*clock_adjtime_fn)(clockid_t, struct timex *);
typedef int (*cond_timedwait_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
typedef int (*cond_clockwait_fn)(pthread_cond_t *, pthread_mutex_t *, clockid_t,
                                 const struct timespec *);
typedef int (*sem_timedwait_fn)(sem_t *, const struct timespec *);
typedef int (*sem_clockwait_fn)(sem_t *, clockid_t, const struct timespec *);
typedef int (*mutex_timedlock_fn)(pthread_mutex_t *, const struct timespec *);
typedef int (*mutex_clocklock_fn)(pthread_mutex_t *, clockid_t, const struct timespec *);
typedef int (*nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

static gettime_fn real_gettime;
static adjtimex_fn real_adjtimex;
static clock_adjtime_fn real_clock_adjtime;
static cond_timedwait_fn real_cond_timedwait;
static cond_clockwait_fn real_cond_clockwait;
static sem_timedwait_fn real_sem_timedwait;
static sem_clockwait_fn real_sem_clockwait;
static mutex_timedlock_fn real_mutex_timedlock;
static mutex_clocklock_fn real_mutex_clocklock;
static nanosleep_fn real_clock_nanosleep;

static int sys_gettime(clockid_t clk, struct timespec *ts) {
    return (int)syscall(SYS_clock_gettime, clk, ts);
}

static void init(void) {
    if (g_init)
        return;
    real_gettime = (gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    real_adjtimex = (adjtimex_fn)dlsym(RTLD_NEXT, "adjtimex");
    real_clock_adjtime = (clock_adjtime_fn)dlsym(RTLD_NEXT, "clock_adjtime");
    real_cond_timedwait = (cond_timedwait_fn)dlvsym(RTLD_NEXT, "pthread_cond_timedwait",
                                                    "GLIBC_2.3.2");
    if (!real_cond_timedwait)
        real_cond_timedwait = (cond_timedwait_fn)dlsym(RTLD_NEXT, "pthread_cond_timedwait");
    real_cond_clockwait = (cond_clockwait_fn)dlsym(RTLD_NEXT, "pthread_cond_clockwait");
    real_sem_timedwait = (sem_timedwait_fn)dlsym(RTLD_NEXT, "sem_timedwait");
    real_sem_clockwait = (sem_clockwait_fn)dlsym(RTLD_NEXT, "sem_clockwait");
    real_mutex_timedlock = (mutex_timedlock_fn)dlsym(RTLD_NEXT, "pthread_mutex_timedlock");
    real_mutex_clocklock = (mutex_clocklock_fn)dlsym(RTLD_NEXT, "pthread_mutex_clocklock");
    real_clock_nanosleep = (nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    const char *path = getenv("CLOCKSHIM_CTL");
    if (path && *path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            void *p = mmap(NULL, sizeof(struct ctl), PROT_READ, MAP_SHARED, fd, 0);
            close(fd);
            if (p != MAP_FAILED) {
                if (((struct ctl *)p)->magic == CTL_MAGIC &&
                    ((struct ctl *)p)->version == CTL_VERSION)
                    g_ctl = (volatile struct ctl *)p;
                else
                    munmap(p, sizeof(struct ctl));
            }
        }
    }
    __atomic_store_n(&g_init, 1, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void shim_ctor(void) { init(); }

static int rgettime(clockid_t clk, struct timespec *ts) {
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    return real_gettime ? real_gettime(clk, ts) : sys_gettime(clk, ts);
}

/* Copy the parameters without tearing: retry while the writer is inside (odd sequence). */
static int load_params(struct params *p) {
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    volatile struct ctl *c = g_ctl;
    if (!c)
        return 0;
    for (;;) {
        uint64_t s1 = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            continue;
        }
        p->flags = c->flags;
        p->real_base_ns = c->real_base_ns;
        p->offset_ns = c->offset_ns;
        p->freq = c->freq;
        p->raw_base_real_ns = c->raw_base_real_ns;
        p->raw_base_fake_ns = c->raw_base_fake_ns;
        p->slew_start_ns = c->slew_start_ns;
        p->slew_end_ns = c->slew_end_ns;
        p->slew_rate = c->slew_rate;
        p->slew_accum_ns = c->slew_accum_ns;
        p->leap_at_ns = c->leap_at_ns;
        p->tx_maxerror = c->tx_maxerror;
        p->tx_esterror = c->tx_esterror;
        p->tx_offset = c->tx_offset;
        p->tx_freq = c->tx_freq;
        p->tx_status = c->tx_status;
        p->tx_state = c->tx_state;
        p->tx_tai = c->tx_tai;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&c->seq, __ATOMIC_RELAXED) == s1)
            return 1;
    }
}

static int64_t ts_ns(const struct timespec *ts) { return ts->tv_sec * NS + ts->tv_nsec; }

static struct timespec ns_ts(int64_t ns) {
    struct timespec ts;
    ts.tv_sec = ns / NS;
    ts.tv_nsec = ns % NS;
    if (ts.tv_nsec < 0) {
        ts.tv_nsec += NS;
        ts.tv_sec -= 1;
    }
    return ts;
}

static int64_t slews(const struct params *p, int64_t real_ns) {
    int64_t s = p->slew_accum_ns;
    if (p->slew_rate != 0.0 && real_ns > p->slew_start_ns) {
        int64_t until = real_ns < p->slew_end_ns ? real_ns : p->slew_end_ns;
        s += (int64_t)(p->slew_rate * (double)(until - p->slew_start_ns));
    }
    return s;
}

/* D without the leap second */
static int64_t d_noleap(const struct params *p, int64_t real_ns) {
    return p->offset_ns + (int64_t)(p->freq * (double)(real_ns - p->real_base_ns)) +
           slews(p, real_ns);
}

static int64_t leap(const struct params *p, int64_t real_ns) {
    return (p->leap_at_ns && real_ns >= p->leap_at_ns) ? NS : 0;
}

static int64_t fake_raw(const struct params *p, int64_t raw_ns) {
    return p->raw_base_fake_ns +
           (int64_t)((double)(raw_ns - p->raw_base_real_ns) * (1.0 + p->freq));
}

static clockid_t base_clock(clockid_t clk) {
    switch (clk) {
    case CLOCK_REALTIME_COARSE: return CLOCK_REALTIME;
    case CLOCK_MONOTONIC_COARSE: return CLOCK_MONOTONIC;
    default: return clk;
    }
}

/* fake reading of clk from a real reading of the same clock (plus what the model needs) */
static int64_t fake_of(const struct params *p, clockid_t clk, int64_t real_ns) {
    struct timespec a, b;
    switch (base_clock(clk)) {
    case CLOCK_REALTIME:
        return real_ns + d_noleap(p, real_ns) - leap(p, real_ns);
    case CLOCK_TAI:
        rgettime(CLOCK_REALTIME, &a);
        return real_ns + d_noleap(p, ts_ns(&a));
    case CLOCK_MONOTONIC_RAW:
        return fake_raw(p, real_ns);
    case CLOCK_MONOTONIC:
        rgettime(CLOCK_MONOTONIC_RAW, &a);
        rgettime(CLOCK_REALTIME, &b);
        return real_ns + (fake_raw(p, ts_ns(&a)) - ts_ns(&a)) + slews(p, ts_ns(&b));
    case CLOCK_BOOTTIME: {
        struct timespec m;
        rgettime(CLOCK_MONOTONIC, &m);
        return fake_of(p, CLOCK_MONOTONIC, ts_ns(&m)) + (real_ns - ts_ns(&m));
    }
    default:
        return real_ns; /* CPU-time clocks and others are not shifted */
    }
}

static int shifted(clockid_t clk) {
    switch (clk) {
    case CLOCK_REALTIME: case CLOCK_REALTIME_COARSE: case CLOCK_MONOTONIC:
    case CLOCK_MONOTONIC_COARSE: case CLOCK_MONOTONIC_RAW: case CLOCK_BOOTTIME:
    case CLOCK_TAI:
        return 1;
    default:
        return 0;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    int rc = rgettime(clk, ts);
    struct params p;
    if (rc != 0 || !shifted(clk) || !load_params(&p))
        return rc;
    *ts = ns_ts(fake_of(&p, clk, ts_ns(ts)));
    return 0;
}

int __clock_gettime(clockid_t clk, struct timespec *ts) { return clock_gettime(clk, ts); }

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    if (tz)
        memset(tz, 0, sizeof(struct timezone));
    if (!tv)
        return 0;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}

/* -- the kernel's NTP state, read-only ---------------------------------------------------- */
static int fill_timex(struct timex *tx) {
    struct params p;
    int have = load_params(&p);
    if (have && (p.flags & 1)) {
        int rc = real_adjtimex ? real_adjtimex(tx) : -1;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        tx->time.tv_sec = ts.tv_sec;
        tx->time.tv_usec = (tx->status & STA_NANO) ? ts.tv_nsec : ts.tv_nsec / 1000;
        return rc;
    }
    if (!have)
        return real_adjtimex ? real_adjtimex(tx) : -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(tx, 0, sizeof *tx);
    tx->offset = p.tx_offset;
    tx->freq = p.tx_freq;
    tx->maxerror = p.tx_maxerror;
    tx->esterror = p.tx_esterror;
    tx->status = p.tx_status;
    tx->constant = 2;
    tx->precision = 1;
    tx->tolerance = 32768000;
    tx->time.tv_sec = ts.tv_sec;
    tx->time.tv_usec = (p.tx_status & STA_NANO) ? ts.tv_nsec : ts.tv_nsec / 1000;
    tx->tick = 10000;
    tx->tai = p.tx_tai;
    return p.tx_state;
}

static int read_only_timex(struct timex *tx) {
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (!tx) {
        errno = EFAULT;
        return -1;
    }
    if (tx->modes != 0) { /* any set request, ADJ_OFFSET_SS_READ included: refused */
        errno = EPERM;
        return -1;
    }
    return fill_timex(tx);
}

int adjtimex(struct timex *tx) { return read_only_timex(tx); }
int __adjtimex(struct timex *tx) { return read_only_timex(tx); }
int ntp_adjtime(struct timex *tx) { return read_only_timex(tx); }

int clock_adjtime(clockid_t clk, struct timex *tx) {
    if (clk == CLOCK_REALTIME)
        return read_only_timex(tx);
    if (tx && tx->modes != 0) {
        errno = EPERM;
        return -1;
    }
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    return real_clock_adjtime ? real_clock_adjtime(clk, tx) : -1;
}

/* <sys/timex.h> redirects ntp_gettime to ntp_gettimex; the old symbol fills only the first
 * three fields (the short struct of its ABI), so this one does too. */
int shim_ntp_gettime(struct ntptimeval *ntv) __asm__("ntp_gettime");
int shim_ntp_gettime(struct ntptimeval *ntv) {
    struct timex tx = {0};
    int rc = fill_timex(&tx);
    ntv->time = tx.time;
    ntv->maxerror = tx.maxerror;
    ntv->esterror = tx.esterror;
    return rc;
}

int ntp_gettimex(struct ntptimeval *ntv) {
    struct timex tx = {0};
    int rc = fill_timex(&tx);
    ntv->time = tx.time;
    ntv->maxerror = tx.maxerror;
    ntv->esterror = tx.esterror;
    ntv->tai = tx.tai;
    return rc;
}

int clock_settime(clockid_t clk, const struct timespec *ts) {
    (void)clk; (void)ts;
    errno = EPERM;
    return -1;
}

int settimeofday(const struct timeval *tv, const struct timezone *tz) {
    (void)tv; (void)tz;
    errno = EPERM;
    return -1;
}

int stime(const time_t *t) {
    (void)t;
    errno = EPERM;
    return -1;
}

int adjtime(const struct timeval *delta, struct timeval *olddelta) {
    if (delta) {
        errno = EPERM;
        return -1;
    }
    if (olddelta)
        memset(olddelta, 0, sizeof *olddelta);
    return 0;
}

/* -- timed waits: fake absolute deadline -> real absolute deadline ----------------------- */
static struct timespec to_real(clockid_t clk, const struct timespec *abs, struct params *p) {
    struct timespec now;
    rgettime(clk, &now);
    int64_t real_now = ts_ns(&now);
    int64_t remaining = ts_ns(abs) - fake_of(p, clk, real_now);
    return ns_ts(real_now + remaining);
}

/* glibc keeps a condition variable's clock in bit 1 of __wrefs (set: CLOCK_MONOTONIC; bit 0
 * is process-shared). CPython's GIL waits on a CLOCK_MONOTONIC condition variable: read as
 * REALTIME, its 5 ms waits ended D(t) early or late (a host whose REALTIME ran ahead spun on
 * the GIL whenever two threads wanted it). */
static clockid_t cond_clock(const pthread_cond_t *cond) {
    return (cond->__data.__wrefs & 2) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
}

int pthread_cond_timedwait(pthread_cond_t *restrict cond, pthread_mutex_t *restrict mutex,
                           const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(cond_clock(cond), abstime, &p);
        return real_cond_timedwait(cond, mutex, &real);
    }
    return real_cond_timedwait(cond, mutex, abstime);
}

int pthread_cond_clockwait(pthread_cond_t *restrict cond, pthread_mutex_t *restrict mutex,
                           clockid_t clk, const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(clk, abstime, &p);
        return real_cond_clockwait(cond, mutex, clk, &real);
    }
    return real_cond_clockwait(cond, mutex, clk, abstime);
}

int sem_timedwait(sem_t *restrict sem, const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(CLOCK_REALTIME, abstime, &p);
        return real_sem_timedwait(sem, &real);
    }
    return real_sem_timedwait(sem, abstime);
}

int sem_clockwait(sem_t *restrict sem, clockid_t clk, const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(clk, abstime, &p);
        return real_sem_clockwait(sem, clk, &real);
    }
    return real_sem_clockwait(sem, clk, abstime);
}

int pthread_mutex_timedlock(pthread_mutex_t *restrict m, const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(CLOCK_REALTIME, abstime, &p);
        return real_mutex_timedlock(m, &real);
    }
    return real_mutex_timedlock(m, abstime);
}

int pthread_mutex_clocklock(pthread_mutex_t *restrict m, clockid_t clk,
                            const struct timespec *restrict abstime) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if (abstime && load_params(&p)) {
        struct timespec real = to_real(clk, abstime, &p);
        return real_mutex_clocklock(m, clk, &real);
    }
    return real_mutex_clocklock(m, clk, abstime);
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    struct params p;
    if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE))
        init();
    if ((flags & TIMER_ABSTIME) && req && shifted(clk) && load_params(&p)) {
        struct timespec real = to_real(base_clock(clk), req, &p);
        return real_clock_nanosleep(clk, flags, &real, rem);
    }
    return real_clock_nanosleep(clk, flags, req, rem);
}
