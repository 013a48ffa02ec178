#include "core_api.h"

const char *vmm_core_version(void) { return "0.1.0"; }
