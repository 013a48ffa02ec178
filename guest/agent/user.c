/*
 * The user an exec runs as: "name", "uid", "name:group" or "uid:gid", looked up in the
 * root's /etc/passwd and /etc/group (the supplementary groups too, for a name without a
 * group); exec.c applies what this finds in the child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

static int all_digits(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* "name", "uid", "name:group" or "uid:gid", looked up in the root's /etc/passwd and
 * /etc/group. A numeric uid need not exist (as with Docker: gid 0, HOME /). */
int resolve_user(const char *spec, struct cred *cr, char *why, size_t whylen)
{
	char user[256], *group = NULL;
	snprintf(user, sizeof(user), "%s", spec);
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = 0;
		group = colon + 1;
	}
	memset(cr, 0, sizeof(*cr));
	cr->set = 1;
	snprintf(cr->home, sizeof(cr->home), "/");
	struct passwd *pw = all_digits(user) ? getpwuid((uid_t)strtoul(user, NULL, 10))
					     : getpwnam(user);
	if (pw) {
		cr->uid = pw->pw_uid;
		cr->gid = pw->pw_gid;
		snprintf(cr->home, sizeof(cr->home), "%s", pw->pw_dir);
		snprintf(cr->name, sizeof(cr->name), "%s", pw->pw_name);
	} else if (all_digits(user)) {
		cr->uid = (uid_t)strtoul(user, NULL, 10);
	} else {
		snprintf(why, whylen, "no user %s in /etc/passwd", user);
		return ENOENT;
	}
	if (group && *group) {
		struct group *gr = all_digits(group) ? getgrgid((gid_t)strtoul(group, NULL, 10))
						     : getgrnam(group);
		if (gr)
			cr->gid = gr->gr_gid;
		else if (all_digits(group))
			cr->gid = (gid_t)strtoul(group, NULL, 10);
		else {
			snprintf(why, whylen, "no group %s in /etc/group", group);
			return ENOENT;
		}
	}
	cr->groups[0] = cr->gid;
	cr->ngroups = 1;
	if (pw && !group) {
		int n = MAX_GROUPS;
		if (getgrouplist(pw->pw_name, cr->gid, cr->groups, &n) >= 0)
			cr->ngroups = n;
	}
	return 0;
}
