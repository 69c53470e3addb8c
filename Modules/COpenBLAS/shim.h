#ifndef COPENBLAS_SHIM_H
#define COPENBLAS_SHIM_H
// CBLAS and LAPACKE from OpenBLAS / Debian's liblapacke, plus OpenBLAS's threading and
// kernel-identification entry points (declared in cblas.h of OpenBLAS builds).
#include <cblas.h>
#include <lapacke.h>

// Re-declared so the module does not depend on how a distribution's cblas.h spells them.
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
#endif
