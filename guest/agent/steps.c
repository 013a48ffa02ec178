/*
 * The agent's start-up steps on the guest clock, for the boot-latency lab: with
 * vmm.debug=1, PID 1 prints one console line before READY,
 *
 *   agent: steps start=0 mounts=812 image=5310 ... ready=41250   (us since main())
 *
 * which `python -m vmm bench boot --init agent` and vmm/research/phases.py read back as
 * the agent's own phases. The marks are kept in memory and printed in one write, so the
 * measuring costs one console line, not one per step.
 */
#include <stdio.h>
#include <string.h>

#include "agent.h"

#define MAX_STEPS 24

struct step {
	const char *name;
	uint64_t ns;
};
static struct step steps[MAX_STEPS];
static int nsteps;

void step_mark(const char *name)
{
	if (nsteps < MAX_STEPS)
		steps[nsteps++] = (struct step){name, boottime_ns()};
}

void steps_log(void)
{
	char line[768];
	size_t n = (size_t)snprintf(line, sizeof(line), "agent: steps");
	for (int i = 0; i < nsteps && n < sizeof(line); i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " %s=%llu", steps[i].name,
				      (unsigned long long)((steps[i].ns - cfg.agent_start_ns) / 1000));
	log_msg("%s", line);
}
