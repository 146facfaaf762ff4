/* Experiment, not part of the system: DALI's CPU decoder with swscale's default conversion.
 *
 * DALI 2.4 creates its YUV->RGB context with SWS_BILINEAR | SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND
 * (0x42002); this preload clears the last two, so the decoder converts through swscale's SIMD path
 * (the conversion the peers get by default: their chroma is not interpolated horizontally). It
 * changes DALI's pixels (mean 4.2, max 95 levels on 40 frames of the synthetic set), so it measures what the
 * flags cost and nothing else. benchmarks/RESULTS.md ("What DALI's conversion flags cost") has the
 * figures. Only for a DALI-only process: it forwards every sws_getContext call to DALI's library.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/sws_default_flags.so benchmarks/experiments/sws_default_flags.c -ldl
 *   SWS_SHIM_LIB=$(ls .venv/lib/python3.11/site-packages/nvidia/dali/.libs/libswscale-*) \
 *   LD_PRELOAD=/tmp/sws_default_flags.so python -m benchmarks.loader --loaders dali --no-ceiling
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define SWS_FULL_CHR_H_INT 0x2000
#define SWS_ACCURATE_RND 0x40000

typedef void *(*get_context_fn)(int, int, int, int, int, int, int, void *, void *, const double *);

void *sws_getContext(int src_w, int src_h, int src_fmt, int dst_w, int dst_h, int dst_fmt, int flags,
                     void *src_filter, void *dst_filter, const double *param) {
    static get_context_fn real;
    if (!real) {
        /* DALI loads its libraries into a local scope, so RTLD_NEXT would not find them */
        const char *path = getenv("SWS_SHIM_LIB");
        void *lib = path ? dlopen(path, RTLD_LAZY | RTLD_LOCAL) : NULL;
        real = lib ? (get_context_fn)dlsym(lib, "sws_getContext") : NULL;
        if (!real) {
            fprintf(stderr, "sws_default_flags: set SWS_SHIM_LIB to DALI's libswscale (%s)\n",
                    path ? dlerror() : "unset");
            abort();
        }
        fprintf(stderr, "sws_default_flags: flags %#x -> %#x\n", flags,
                flags & ~(SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND));
    }
    return real(src_w, src_h, src_fmt, dst_w, dst_h, dst_fmt, flags & ~(SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND),
                src_filter, dst_filter, param);
}
