/*
 * A process's privileges beyond its uid and gid, applied in the exec child: supplementary
 * groups (GROUPS), umask (UMASK), no_new_privs (NO_NEW_PRIVS) and the five capability sets
 * (CAPS). PROTOCOL.md describes the fields.
 *
 * The order is the one that lets a non-root uid keep the capabilities it is given (runc's):
 * no_new_privs; drop from the bounding set what it does not hold, while still root with
 * CAP_SETPCAP; PR_SET_KEEPCAPS, so the switch to a non-root uid keeps the permitted set
 * (it clears only the effective one); the user switch (exec.c); then capset() to the
 * effective, permitted and inheritable sets asked for, and raise the ambient ones. Across
 * execve a non-root process keeps only its ambient capabilities (effective and permitted
 * become the ambient set), root gets its bounding set, as under runc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"

#define CAPS_VERSION_3 0x20080522 /* _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set */
#define CAPS_VALID ((UINT64_C(1) << (CAP_LAST + 1)) - 1)

struct cap_header {
	uint32_t version;
	int pid;
};

struct cap_data {
	uint32_t effective, permitted, inheritable;
};

int privs_field(struct privs *pv, uint16_t tag, const uint8_t *v, uint32_t len, const char **bad)
{
	uint64_t u;
	switch (tag) {
	case G_GROUPS:
		/* u32 gids, little-endian; an empty field is an empty list */
		if (len % 4 || len / 4 > MAX_GROUPS_REQ) {
			*bad = "bad GROUPS field (at most 1024 gids of 4 bytes)";
			return 1;
		}
		pv->ngroups = (int)(len / 4);
		for (int i = 0; i < pv->ngroups; i++) {
			pv->groups[i] = get_le32(v + 4 * i);
			if (pv->groups[i] == UINT32_MAX) {
				*bad = "bad GROUPS field (gid 4294967295 is not a group)";
				return 1;
			}
		}
		pv->has_groups = 1;
		return 1;
	case G_UMASK:
		if (tlv_u64(v, len, &u) < 0 || u > 0777) {
			*bad = "bad UMASK field (0..0777)";
			return 1;
		}
		pv->has_umask = 1;
		pv->umask = (unsigned)u;
		return 1;
	case G_NO_NEW_PRIVS:
		if (tlv_u64(v, len, &u) < 0 || u > 1) {
			*bad = "bad NO_NEW_PRIVS field (0 or 1)";
			return 1;
		}
		pv->no_new_privs = (int)u;
		return 1;
	case G_CAPS:
		if (len != 8 * NCAPSETS) {
			*bad = "bad CAPS field (five 8-byte sets)";
			return 1;
		}
		for (int i = 0; i < NCAPSETS; i++) {
			tlv_u64(v + 8 * i, 8, &pv->caps[i]);
			if (pv->caps[i] & ~CAPS_VALID) {
				*bad = "bad CAPS field (a capability above CAP_CHECKPOINT_RESTORE, 40)";
				return 1;
			}
		}
		pv->has_caps = 1;
		return 1;
	}
	return 0;
}

int privs_before_user(const struct privs *pv)
{
	if (pv->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return ST_NNP;
	if (!pv->has_caps)
		return 0;
	for (int c = 0; c <= CAP_LAST; c++) {
		if (pv->caps[CAPS_BOUNDING] >> c & 1)
			continue;
		/* EINVAL: a capability this kernel does not have, so nothing to drop */
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
			return ST_CAPS;
	}
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		return ST_CAPS;
	return 0;
}

int privs_after_user(const struct privs *pv)
{
	if (pv->has_umask)
		umask((mode_t)pv->umask);
	if (!pv->has_caps)
		return 0;
	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		return ST_CAPS;
	struct cap_header hdr = {CAPS_VERSION_3, 0};
	struct cap_data data[2];
	for (int w = 0; w < 2; w++) {
		data[w].effective = (uint32_t)(pv->caps[CAPS_EFFECTIVE] >> (32 * w));
		data[w].permitted = (uint32_t)(pv->caps[CAPS_PERMITTED] >> (32 * w));
		data[w].inheritable = (uint32_t)(pv->caps[CAPS_INHERITABLE] >> (32 * w));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		return ST_CAPS;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return ST_CAPS;
	for (int c = 0; c <= CAP_LAST; c++)
		if ((pv->caps[CAPS_AMBIENT] >> c & 1) &&
		    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
			return ST_CAPS; /* not in permitted and inheritable: say so, not drop it */
	return 0;
}
