/* The C core's interface to Python (vmm._core). Only what sits between the cffi markers is
 * visible to Python; keep it plain C declarations (no macros, no includes). */
#ifndef VMM_CORE_API_H
#define VMM_CORE_API_H
#include <stdint.h>
#include <stddef.h>

/* cffi-begin */
const char *vmm_core_version(void);
/* cffi-end */

#endif
