/*
 * corral-monitor: the native monitoring phase of a container's shim (agent/runtime/shim.py).
 *
 * The Python shim creates the container, reports to its caller, then execve()s this program
 * in the same process: the container's init stays its child (and the child-subreaper flag
 * survives execve), so it can wait for it, while the ~15 MiB of the interpreter are gone.
 * conmon does the same job for podman; this one writes the shim's own formats:
 *
 *   - the container's stdout/stderr (pipes inherited as fds) go to the log as JSON lines,
 *     {"time": ISO-8601 UTC with microseconds, "ts": seconds, "stream": ..., "log": text},
 *     byte for byte what the Python LogWriter writes (UTF-8 decoded with U+FFFD for invalid
 *     bytes, as Python's decode(errors="replace"), escaped as json.dumps(ensure_ascii=True)),
 *     rotated to <log>.1 once it grows past --log-max bytes;
 *   - children re-parented to us are reaped;
 *   - after --scope-delay-ms the monitor moves itself into its own cgroup scope (it makes
 *     the --scope-dir directories, then writes the --scope-procs files), out of its
 *     creator's; at the end it steps back out (--slice-procs) and removes the scope. Without
 *     them, the --scope-helper-arg command does the move when due and leaves a --scope-plan;
 *   - when the init exits (output drained for up to 0.2 s), the exit is written atomically to
 *     --exit-file as {"exit_code", "finished_at", "oom_killed"}; StateStore.read folds it into
 *     the container's state. Exit code by shell convention: 128 + signal for a kill;
 *   - with --resume-on always|failure, an exit the restart policy may restart execs what
 *     follows "--" (the Python shim's resume: it restarts the process and execs us again).
 *
 * No allocation on the hot path but the per-stream line buffers; no dependencies beyond libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define MAX_LIST 16
#define PARTIAL_FLUSH 16384 /* a line longer than this is written without its end */
#define DRAIN_MS 200
#define OOM_RECHECK_MS 100

static const char *log_path;
static char log_rotated[4096];
static long long log_max = 10LL * 1024 * 1024;
static int log_fd = -1;
static int partial_clock;

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("corral-monitor: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- output: a growable byte buffer ------------------------------------------------------ */

struct out {
	char *p;
	size_t len, cap;
};

static void out_reserve(struct out *o, size_t more)
{
	if (o->len + more <= o->cap)
		return;
	size_t cap = o->cap ? o->cap : 256;
	while (cap < o->len + more)
		cap *= 2;
	char *p = realloc(o->p, cap);
	if (!p)
		die("out of memory");
	o->p = p;
	o->cap = cap;
}

static void out_bytes(struct out *o, const char *s, size_t n)
{
	out_reserve(o, n);
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void out_str(struct out *o, const char *s) { out_bytes(o, s, strlen(s)); }

struct stream {
	const char *name;
	int fd;
	struct out pending; /* bytes not yet ended by a newline */
	int order; /* when its partial line was last kept: flushed in that order, like Python */
};

static void out_u16(struct out *o, unsigned v)
{
	char esc[16];
	snprintf(esc, sizeof esc, "\\u%04x", v & 0xffff);
	out_bytes(o, esc, 6);
}

/* One code point, escaped as json.dumps(ensure_ascii=True) does. */
static void out_codepoint(struct out *o, unsigned cp)
{
	char c[2] = {(char)cp, 0};
	switch (cp) {
	case '"': out_str(o, "\\\""); return;
	case '\\': out_str(o, "\\\\"); return;
	case '\n': out_str(o, "\\n"); return;
	case '\r': out_str(o, "\\r"); return;
	case '\t': out_str(o, "\\t"); return;
	case '\b': out_str(o, "\\b"); return;
	case '\f': out_str(o, "\\f"); return;
	}
	if (cp >= 0x20 && cp <= 0x7e) {
		out_bytes(o, c, 1);
	} else if (cp < 0x10000) {
		out_u16(o, cp);
	} else {
		cp -= 0x10000;
		out_u16(o, 0xd800 | (cp >> 10));
		out_u16(o, 0xdc00 | (cp & 0x3ff));
	}
}

/* UTF-8 decoding with one U+FFFD per maximal invalid subpart: what CPython's
 * bytes.decode("utf-8", errors="replace") produces. */
static void out_utf8_text(struct out *o, const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char b = s[i];
		if (b < 0x80) {
			out_codepoint(o, b);
			i++;
			continue;
		}
		int need;
		unsigned cp, lo = 0x80, hi = 0xbf;
		if (b >= 0xc2 && b <= 0xdf) {
			need = 1;
			cp = b & 0x1f;
		} else if (b >= 0xe0 && b <= 0xef) {
			need = 2;
			cp = b & 0x0f;
			if (b == 0xe0)
				lo = 0xa0;
			else if (b == 0xed)
				hi = 0x9f;
		} else if (b >= 0xf0 && b <= 0xf4) {
			need = 3;
			cp = b & 0x07;
			if (b == 0xf0)
				lo = 0x90;
			else if (b == 0xf4)
				hi = 0x8f;
		} else {
			out_codepoint(o, 0xfffd);
			i++;
			continue;
		}
		size_t j = i + 1;
		int ok = 1;
		for (int k = 0; k < need; k++, j++) {
			if (j >= n || s[j] < lo || s[j] > hi) {
				ok = 0;
				break;
			}
			cp = (cp << 6) | (s[j] & 0x3f);
			lo = 0x80;
			hi = 0xbf;
		}
		if (!ok) {
			out_codepoint(o, 0xfffd);
			i = j; /* resume at the byte that did not fit */
			continue;
		}
		out_codepoint(o, cp);
		i = j;
	}
}

/* A double as Python's repr: the shortest text that reads back as the same value. */
static void out_double(struct out *o, double v)
{
	char text[40];
	for (int precision = 1; precision <= 17; precision++) {
		snprintf(text, sizeof text, "%.*g", precision, v);
		if (strtod(text, NULL) == v)
			break;
	}
	if (!strpbrk(text, ".e"))
		strcat(text, ".0");
	out_str(o, text);
}

/* --- the log ------------------------------------------------------------------------------ */

static void log_open(void)
{
	log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (log_fd < 0)
		die("open %s: %s", log_path, strerror(errno));
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* a full disk loses log lines, never the container */
		}
		p += w;
		n -= (size_t)w;
	}
}

static void log_entry(const char *stream, const unsigned char *line, size_t n)
{
	static struct out o;
	double now = now_seconds();
	time_t secs = (time_t)now;
	long micros = lrint((now - (double)secs) * 1e6); /* rounded, as datetime.fromtimestamp */
	if (micros >= 1000000) {
		secs++;
		micros -= 1000000;
	}
	struct tm tm;
	char stamp[64];
	gmtime_r(&secs, &tm);
	strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
	o.len = 0;
	out_str(&o, "{\"time\": \"");
	out_str(&o, stamp);
	snprintf(stamp, sizeof stamp, ".%06ldZ\", \"ts\": ", micros);
	out_str(&o, stamp);
	out_double(&o, now);
	out_str(&o, ", \"stream\": \"");
	out_str(&o, stream);
	out_str(&o, "\", \"log\": \"");
	out_utf8_text(&o, line, n);
	out_str(&o, "\"}\n");
	write_all(log_fd, o.p, o.len);
	struct stat st;
	if (fstat(log_fd, &st) == 0 && st.st_size > log_max) {
		close(log_fd);
		rename(log_path, log_rotated);
		log_open();
	}
}

static void stream_add(struct stream *s, const unsigned char *data, size_t n)
{
	struct out *b = &s->pending;
	out_bytes(b, (const char *)data, n);
	size_t start = 0;
	for (size_t i = 0; i < b->len; i++) {
		if (b->p[i] == '\n') {
			log_entry(s->name, (unsigned char *)b->p + start, i + 1 - start);
			start = i + 1;
		}
	}
	size_t rest = b->len - start;
	if (rest > PARTIAL_FLUSH) {
		log_entry(s->name, (unsigned char *)b->p + start, rest);
		rest = 0;
	} else if (rest > 0) {
		s->order = ++partial_clock; /* Python's dict pops and re-inserts it: now the last */
	}
	memmove(b->p, b->p + b->len - rest, rest);
	b->len = rest;
}

static void streams_flush(struct stream *streams, int count)
{
	for (;;) { /* oldest partial line first */
		struct stream *next = NULL;
		for (int i = 0; i < count; i++)
			if (streams[i].pending.len && (!next || streams[i].order < next->order))
				next = &streams[i];
		if (!next)
			return;
		log_entry(next->name, (unsigned char *)next->pending.p, next->pending.len);
		next->pending.len = 0;
	}
}

/* Read once from a stream's pipe; 0 at its end. */
static int stream_read(struct stream *s)
{
	unsigned char data[65536];
	ssize_t n = read(s->fd, data, sizeof data);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0) {
		close(s->fd);
		s->fd = -1;
		return 0;
	}
	stream_add(s, data, (size_t)n);
	return 1;
}

/* --- cgroups ------------------------------------------------------------------------------ */

static void write_pid_to(const char *const *files, int count)
{
	char pid[24];
	int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
	for (int i = 0; i < count; i++) {
		int fd = open(files[i], O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (write(fd, pid, (size_t)n) < 0) {
			/* best effort, as the Python shim: the monitor keeps working where it is */
		}
		close(fd);
	}
}

/* A small (cgroup) file's text, NUL-terminated; its length, or -1. */
static ssize_t read_small(const char *path, char *text, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, text, size - 1);
	close(fd);
	text[n > 0 ? n : 0] = 0;
	return n;
}

/* A new v1 cpuset starts with empty cpus and mems and refuses tasks until they are set:
 * copy the parent's (as V1Manager does). Nothing to do where the file is absent (v2, other
 * controllers). */
static void inherit_cpuset(const char *dir, const char *name)
{
	char path[4200], parent[4200], value[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	ssize_t len = read_small(path, value, sizeof value);
	if (len < 0 || len > 1) /* absent, or set already (empty reads as "\n") */
		return;
	snprintf(parent, sizeof parent, "%s", dir);
	char *slash = strrchr(parent, '/');
	if (!slash)
		return;
	snprintf(slash, sizeof parent - (size_t)(slash - parent), "/%s", name);
	ssize_t n = read_small(parent, value, sizeof value);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (n > 0 && fd >= 0 && write(fd, value, (size_t)n) < 0) {
		/* the move then fails: the monitor stays where it is, as the Python shim would */
	}
	if (fd >= 0)
		close(fd);
}

/* mkdir the scope in each hierarchy. */
static void make_dirs(const char *const *dirs, int count)
{
	for (int i = 0; i < count; i++) {
		if (mkdir(dirs[i], 0755) != 0)
			continue;
		inherit_cpuset(dirs[i], "cpuset.cpus");
		inherit_cpuset(dirs[i], "cpuset.mems");
	}
}

/* The number on the line "KEY N" of a keyed file (memory.events, memory.oom_control). */
static long long read_key(const char *path, const char *key)
{
	char text[4096];
	if (read_small(path, text, sizeof text) <= 0)
		return -1;
	size_t klen = strlen(key);
	for (char *line = text; line; line = strchr(line, '\n')) {
		line += *line == '\n';
		if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
			return strtoll(line + klen + 1, NULL, 10);
	}
	return -1;
}

static pid_t start_helper(char **argv)
{
	pid_t child = fork();
	if (child == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	return child;
}

/* The helper's plan: "dir PATH" (the scope, one per hierarchy) and "slice PATH" (where to
 * step back out to). The strings are leaked on purpose: the process ends right after. */
static void read_plan(const char *path, const char **slice, int *n_slice, const char **dirs,
		      int *n_dirs, int *moved)
{
	FILE *plan = fopen(path, "re");
	char line[4200];
	if (!plan)
		return;
	*moved = 1;
	while (fgets(line, sizeof line, plan)) {
		line[strcspn(line, "\n")] = 0;
		if (strncmp(line, "dir ", 4) == 0 && *n_dirs < MAX_LIST)
			dirs[(*n_dirs)++] = strdup(line + 4);
		else if (strncmp(line, "slice ", 6) == 0 && *n_slice < MAX_LIST)
			slice[(*n_slice)++] = strdup(line + 6);
	}
	fclose(plan);
}

/* --- main --------------------------------------------------------------------------------- */

static void reap(pid_t init, int *status, int *exited)
{
	for (;;) {
		int st;
		pid_t child = waitpid(-1, &st, WNOHANG);
		if (child <= 0)
			return;
		if (child == init) {
			*status = st;
			*exited = 1;
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"pid", required_argument, 0, 'p'},        {"stdout-fd", required_argument, 0, 'o'},
		{"stderr-fd", required_argument, 0, 'e'},  {"log", required_argument, 0, 'l'},
		{"log-max", required_argument, 0, 'm'},    {"exit-file", required_argument, 0, 'x'},
		{"oom-file", required_argument, 0, 'f'},   {"oom-base", required_argument, 0, 'b'},
		{"scope-delay-ms", required_argument, 0, 'd'},
		{"scope-procs", required_argument, 0, 's'}, {"slice-procs", required_argument, 0, 'S'},
		{"scope-dir", required_argument, 0, 'D'},  {"resume-on", required_argument, 0, 'r'},
		{"scope-helper-arg", required_argument, 0, 'h'},
		{"scope-plan", required_argument, 0, 'P'},  {0, 0, 0, 0},
	};
	pid_t init = 0;
	const char *exit_file = NULL, *oom_file = NULL;
	long long oom_base = 0, scope_delay = 50;
	const char *scope_procs[MAX_LIST], *slice_procs[MAX_LIST], *scope_dirs[MAX_LIST];
	int n_scope = 0, n_slice = 0, n_dirs = 0;
	const char *resume_on = NULL; /* "always" or "failure": exec the rest of argv then */
	/* Where the scope is not given: a helper (the Python shim's scope code) run when due moves
	 * us and writes the plan for the end ("dir PATH", "slice PATH/cgroup.procs" lines). */
	char *helper_argv[MAX_LIST + 1] = {0};
	int n_helper = 0;
	const char *scope_plan = NULL;
	pid_t helper = 0;
	struct stream streams[2] = {{.name = "stdout", .fd = -1}, {.name = "stderr", .fd = -1}};
	int opt;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'p': init = (pid_t)atoi(optarg); break;
		case 'o': streams[0].fd = atoi(optarg); break;
		case 'e': streams[1].fd = atoi(optarg); break;
		case 'l': log_path = optarg; break;
		case 'm': log_max = atoll(optarg); break;
		case 'x': exit_file = optarg; break;
		case 'f': oom_file = optarg; break;
		case 'b': oom_base = atoll(optarg); break;
		case 'd': scope_delay = atoll(optarg); break;
		case 's': if (n_scope < MAX_LIST) scope_procs[n_scope++] = optarg; break;
		case 'S': if (n_slice < MAX_LIST) slice_procs[n_slice++] = optarg; break;
		case 'D': if (n_dirs < MAX_LIST) scope_dirs[n_dirs++] = optarg; break;
		case 'r': resume_on = optarg; break;
		case 'h': if (n_helper < MAX_LIST) helper_argv[n_helper++] = optarg; break;
		case 'P': scope_plan = optarg; break;
		default: die("usage: see agent/runtime/native/monitor.c");
		}
	}
	if (init <= 0 || !log_path || !exit_file)
		die("--pid, --log and --exit-file are required");
	snprintf(log_rotated, sizeof log_rotated, "%s.1", log_path);
	log_open();
	for (int i = 0; i < 2; i++)
		if (streams[i].fd >= 0)
			fcntl(streams[i].fd, F_SETFD, FD_CLOEXEC);
	int pidfd = (int)syscall(SYS_pidfd_open, init, 0);

	long long scope_due = n_scope || n_helper ? monotonic_ms() + scope_delay : -1;
	int moved = 0, exited = 0, status = 0;
	long long exited_at = 0;
	for (;;) {
		struct pollfd fds[3];
		struct stream *of[3];
		int nfds = 0;
		if (pidfd >= 0 && !exited) {
			fds[nfds] = (struct pollfd){pidfd, POLLIN, 0};
			of[nfds++] = NULL;
		}
		for (int i = 0; i < 2; i++) {
			if (streams[i].fd >= 0) {
				fds[nfds] = (struct pollfd){streams[i].fd, POLLIN, 0};
				of[nfds++] = &streams[i];
			}
		}
		long long timeout = exited ? 20 : 1000;
		if (scope_due >= 0 && !exited) {
			long long due_in = scope_due - monotonic_ms();
			if (due_in <= 0) {
				if (n_scope) {
					make_dirs(scope_dirs, n_dirs);
					write_pid_to(scope_procs, n_scope);
					moved = 1;
				} else {
					helper = start_helper(helper_argv);
				}
				scope_due = -1;
			} else if (due_in + 1 < timeout) {
				timeout = due_in + 1;
			}
		}
		int ready = poll(fds, (nfds_t)nfds, (int)timeout);
		for (int i = 0; ready > 0 && i < nfds; i++) {
			if (!fds[i].revents || !of[i])
				continue;
			stream_read(of[i]);
		}
		int was = exited;
		reap(init, &status, &exited);
		if (exited && !was)
			exited_at = monotonic_ms();
		if (exited && ((streams[0].fd < 0 && streams[1].fd < 0) ||
			       monotonic_ms() - exited_at > DRAIN_MS))
			break;
	}
	streams_flush(streams, 2);

	int code = WIFEXITED(status) ? WEXITSTATUS(status)
				     : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 255;
	int oom = 0;
	if (oom_file) {
		long long deadline = monotonic_ms() + (code == 128 + 9 ? OOM_RECHECK_MS : 0);
		for (;;) {
			/* The OOM killer counts its kill after sending SIGKILL: a busy host can reap
			 * the victim before the count moves; for a SIGKILL, look again briefly. */
			oom = read_key(oom_file, "oom_kill") > oom_base;
			if (oom || monotonic_ms() >= deadline)
				break;
			usleep(5000);
		}
	}
	struct out rec = {0};
	char num[32];
	out_str(&rec, "{\"exit_code\": ");
	snprintf(num, sizeof num, "%d", code);
	out_str(&rec, num);
	out_str(&rec, ", \"finished_at\": ");
	out_double(&rec, now_seconds());
	out_str(&rec, oom ? ", \"oom_killed\": true}" : ", \"oom_killed\": false}");
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", exit_file, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) { /* fails only when the container was deleted meanwhile */
		write_all(fd, rec.p, rec.len);
		close(fd);
		if (rename(tmp, exit_file) != 0)
			unlink(tmp);
	}
	close(log_fd);
	if (resume_on && optind < argc && (strcmp(resume_on, "always") == 0 || code != 0)) {
		/* The restart policy may want another run: the Python shim decides (stop requested,
		 * retries left), spawns it and execs us again. We stay in our scope meanwhile. */
		execv(argv[optind], argv + optind);
		fprintf(stderr, "corral-monitor: exec %s: %s\n", argv[optind], strerror(errno));
	}
	if (helper > 0) { /* it moved us (or failed): its plan says how to step out again */
		int st;
		while (waitpid(helper, &st, 0) < 0 && errno == EINTR) {
		}
		if (scope_plan)
			read_plan(scope_plan, slice_procs, &n_slice, scope_dirs, &n_dirs, &moved);
	}
	if (moved)
		write_pid_to(slice_procs, n_slice);
	for (int i = 0; i < n_dirs; i++)
		rmdir(scope_dirs[i]);
	return 0;
}
